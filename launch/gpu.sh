#!/usr/bin/env bash
# Trains samplecnn_jax on this machine's NVIDIA GPUs (one host, any number of GPUs).
#
# Steps: check Python >= 3.12; create a venv (once); install `.[cuda]` into it (jax with its
# CUDA 12 wheels: no system CUDA toolkit needed, only the NVIDIA driver); check that JAX sees
# a GPU; run `python -m samplecnn_jax.main`. All local GPUs join the data-parallel mesh, so
# config.batch_size must divide by their number. Every command is printed (`+ ...`) before
# it runs; --dry-run prints them and runs nothing. Several GPU hosts: see docs/launch.md.
#
# SIGTERM or Ctrl-C stops training cleanly: it finishes the current step, saves the latest
# checkpoint and exits with status 3 ("preempted"; this script passes a SIGTERM sent to it on
# to Python). Running the same command again resumes from that step; 0 means finished.
#
#   launch/gpu.sh --config=FILE[:ARG] --workdir=DIR [flags] [-- extra flags for main.py]
#
# Flags:
#   --config=FILE[:ARG]   run config, e.g. configs/dcase.py or configs/mtat.py:samplecnn,bf16
#   --workdir=DIR         checkpoints, TensorBoard logs and metrics (resumes if it has some)
#   --data-dir=DIR        prepared store (--config.data_dir; default: the config's)
#   --venv=DIR            virtual environment (default .venv in the repository)
#   --python=PYTHON       interpreter that creates the venv (default python3; needs >= 3.12)
#   --skip-install        use the venv as it is
#   --dry-run             print the commands only
#
# Example:
#   launch/gpu.sh --config=configs/dcase.py:rese2multi,bf16 --workdir=workdirs/dcase \
#     --data-dir=prepared/dcase2017 -- --config.batch_size=32

set -euo pipefail

LAUNCH_DIR=${BASH_SOURCE[0]%/*}
[[ "$LAUNCH_DIR" == "${BASH_SOURCE[0]}" ]] && LAUNCH_DIR=.
REPO="$(cd "$LAUNCH_DIR/.." && pwd)"

usage() {
  sed -n '2,/^$/s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
}

SCRIPT_NAME=gpu.sh
# shellcheck source=launch/common.sh
source "$LAUNCH_DIR/common.sh"

CONFIG=""
WORKDIR=""
DATA_DIR=""
VENV="$REPO/.venv"
PYTHON="python3"
SKIP_INSTALL=0
DRY_RUN=0
EXTRA=()

while (( $# )); do
  case "$1" in
    -h | --help) usage; exit 0 ;;
    --config=*) CONFIG="${1#*=}" ;;
    --workdir=*) WORKDIR="${1#*=}" ;;
    --data-dir=*) DATA_DIR="${1#*=}" ;;
    --venv=*) VENV="${1#*=}" ;;
    --python=*) PYTHON="${1#*=}" ;;
    --config | --workdir | --data-dir | --venv | --python)
      (( $# >= 2 )) || die "$1 needs a value"
      set -- "$1=$2" "${@:3}"
      continue ;;
    --skip-install) SKIP_INSTALL=1 ;;
    --dry-run) DRY_RUN=1 ;;
    --) shift; EXTRA=("$@"); break ;;
    *) die "unknown argument $1" ;;
  esac
  shift
done

[[ -n "$CONFIG" ]] || die "--config is required (e.g. --config=configs/dcase.py)"
[[ -n "$WORKDIR" ]] || die "--workdir is required"
if (( DRY_RUN )); then echo "# dry run: the commands below are printed, not run"; fi

cd "$REPO"  # Config paths such as configs/dcase.py are relative to the repository.
if (( ! SKIP_INSTALL )); then
  run "$PYTHON" -c 'import sys; assert sys.version_info >= (3, 12), f"jax 0.12 needs Python >= 3.12, this is {sys.version.split()[0]}: pass --python=python3.12"'
  if [[ ! -x "$VENV/bin/python" ]]; then
    run "$PYTHON" -m venv "$VENV"
  fi
  run "$VENV/bin/pip" install -q -e "${REPO}[cuda]"
fi
run "$VENV/bin/python" -c 'import jax; devices = jax.devices(); print("JAX devices:", devices); assert devices[0].platform == "gpu", "JAX sees no GPU: check the NVIDIA driver (nvidia-smi) and that .[cuda] is installed"'
args=(-m samplecnn_jax.main "--config=$CONFIG" "--workdir=$WORKDIR")
if [[ -n "$DATA_DIR" ]]; then args+=("--config.data_dir=$DATA_DIR"); fi
run_training "$VENV/bin/python" "${args[@]}" ${EXTRA[@]+"${EXTRA[@]}"}
