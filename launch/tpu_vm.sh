#!/usr/bin/env bash
# Trains samplecnn_jax on a Cloud TPU VM (one host or a multi-host pod slice) with gcloud.
#
# Steps: create the VM; copy this checkout to every worker; install `.[tpu]` in a venv on
# every worker; run `python -m samplecnn_jax.main --distributed` on all workers at once
# (main.py then calls jax.distributed.initialize()), streaming the output; delete the VM.
# Every command is printed (`+ ...`) before it runs; --dry-run prints them and runs nothing.
# This script only drives gcloud; it does not prepare data (see docs/launch.md).
#
# A Spot VM's preemption notice (SIGTERM) or Ctrl-C stops training cleanly: every worker
# finishes the same step, saves the latest checkpoint and exits with status 3 ("preempted");
# `run` (or `all`) again resumes from that step.
#
#   launch/tpu_vm.sh STEP --zone=ZONE [flags] [-- extra flags for main.py | command for ssh]
#
# STEP:   create | copy | install | data | run | logs | ssh | delete
#         all = create, copy, install, data (when --data-src is given), run [, delete]
# Flags:
#   --name=NAME                 TPU VM name (default samplecnn)
#   --zone=ZONE                 zone, e.g. us-central2-b (required)
#   --project=PROJECT           Google Cloud project (default: gcloud's configured project)
#   --accelerator-type=TYPE     e.g. v4-8, v4-32, v5litepod-16, v6e-8 (default v4-8)
#   --runtime-version=VERSION   TPU software version (default: chosen from the type)
#   --spot                      create a Spot VM (cheaper, can be preempted)
#   --config=FILE[:ARG]         run config, relative to the repository (default configs/dcase.py)
#   --workdir=DIR               checkpoints and logs on the workers; on a multi-host slice it
#                               must be a filesystem every worker shares (required by run/all)
#   --data-dir=DIR              prepared store on the workers (--config.data_dir)
#   --data-src=URL              `data` step: copy this store (gs://...) to --data-dir on every worker
#   --detach                    run: start in the background (log: ~/samplecnn_jax.log); see `logs`
#   --delete-after              all: delete the VM at the end, also when a step fails
#   --dry-run                   print the commands only
#
# Example:
#   launch/tpu_vm.sh all --zone=us-central2-b --accelerator-type=v4-32 \
#     --config=configs/mtat.py:rese2multi --workdir=/mnt/ckpt/mtat --data-dir=/mnt/data/mtat \
#     --data-src=gs://my-bucket/prepared/mtat --delete-after -- --config.batch_size=32

set -euo pipefail

LAUNCH_DIR=${BASH_SOURCE[0]%/*}
[[ "$LAUNCH_DIR" == "${BASH_SOURCE[0]}" ]] && LAUNCH_DIR=.
REPO="$(cd "$LAUNCH_DIR/.." && pwd)"
REMOTE_DIR="samplecnn_jax"  # Code on each worker, relative to the home folder.
REMOTE_LOG="samplecnn_jax.log"  # Log of the run on each worker, in the home folder.
VENV="venv"  # Virtual environment on each worker, in the home folder.

usage() {
  sed -n '2,/^$/s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
}

SCRIPT_NAME=tpu_vm.sh
# shellcheck source=launch/common.sh
source "$LAUNCH_DIR/common.sh"

run_shell() {  # Prints a shell pipeline, then runs it unless --dry-run.
  printf '+ %s\n' "$1"
  if (( ! DRY_RUN )); then eval "$1"; fi
}

default_runtime() {  # The TPU software version Google documents for each generation.
  case "$1" in
    v6e*) echo "v2-alpha-tpuv6e" ;;
    v5litepod* | v5e*) echo "v2-alpha-tpuv5-lite" ;;
    v5p*) echo "v2-alpha-tpuv5" ;;
    *) echo "tpu-ubuntu2204-base" ;;
  esac
}

# --- Flags ------------------------------------------------------------------------------------

STEP=""
NAME="samplecnn"
ZONE=""
PROJECT=""
ACCELERATOR_TYPE="v4-8"
RUNTIME_VERSION=""
SPOT=0
CONFIG="configs/dcase.py"
WORKDIR=""
DATA_DIR=""
DATA_SRC=""
DETACH=0
DELETE_AFTER=0
DRY_RUN=0
EXTRA=()

while (( $# )); do
  case "$1" in
    -h | --help) usage; exit 0 ;;
    --name=*) NAME="${1#*=}" ;;
    --zone=*) ZONE="${1#*=}" ;;
    --project=*) PROJECT="${1#*=}" ;;
    --accelerator-type=*) ACCELERATOR_TYPE="${1#*=}" ;;
    --runtime-version=*) RUNTIME_VERSION="${1#*=}" ;;
    --config=*) CONFIG="${1#*=}" ;;
    --workdir=*) WORKDIR="${1#*=}" ;;
    --data-dir=*) DATA_DIR="${1#*=}" ;;
    --data-src=*) DATA_SRC="${1#*=}" ;;
    --name | --zone | --project | --accelerator-type | --runtime-version | --config | --workdir \
      | --data-dir | --data-src)
      (( $# >= 2 )) || die "$1 needs a value"
      set -- "$1=$2" "${@:3}"
      continue ;;
    --spot) SPOT=1 ;;
    --detach) DETACH=1 ;;
    --delete-after) DELETE_AFTER=1 ;;
    --dry-run) DRY_RUN=1 ;;
    --) shift; EXTRA=("$@"); break ;;
    -*) die "unknown flag $1" ;;
    *)
      [[ -z "$STEP" ]] || die "one step at a time (got '$STEP' and '$1')"
      STEP="$1" ;;
  esac
  shift
done

case "$STEP" in
  create | copy | install | data | run | logs | ssh | delete | all) ;;
  "") die "no step given (create, copy, install, data, run, logs, ssh, delete or all)" ;;
  *) die "unknown step '$STEP' (create, copy, install, data, run, logs, ssh, delete or all)" ;;
esac
[[ -n "$ZONE" ]] || die "--zone is required (e.g. --zone=us-central2-b)"
[[ -n "$NAME" ]] || die "--name may not be empty"
RUNTIME_VERSION="${RUNTIME_VERSION:-$(default_runtime "$ACCELERATOR_TYPE")}"
if [[ "$STEP" == run || "$STEP" == all ]]; then
  [[ -n "$WORKDIR" ]] || die "--workdir is required to run (a path on the workers)"
fi
if [[ "$STEP" == data || ( "$STEP" == all && -n "$DATA_SRC" ) ]]; then
  [[ -n "$DATA_SRC" && -n "$DATA_DIR" ]] || die "the data step needs --data-src and --data-dir"
fi
if (( DETACH && DELETE_AFTER )); then
  die "--detach and --delete-after together would delete the VM while it trains"
fi
if [[ "$STEP" == ssh ]]; then
  (( ${#EXTRA[@]} )) || die "ssh needs a command after --"
fi
if (( ! DRY_RUN )) && ! command -v gcloud > /dev/null; then
  die "gcloud not found: install the Google Cloud CLI (https://cloud.google.com/sdk/docs/install), or use --dry-run"
fi

GCLOUD_FLAGS=("--zone=$ZONE")
if [[ -n "$PROJECT" ]]; then GCLOUD_FLAGS+=("--project=$PROJECT"); fi
if (( DRY_RUN )); then echo "# dry run: the commands below are printed, not run"; fi

# --- Steps ------------------------------------------------------------------------------------

on_all_workers() {  # Runs a shell command on every worker at once.
  run gcloud compute tpus tpu-vm ssh "$NAME" "${GCLOUD_FLAGS[@]}" --worker=all --command="$1"
}

step_create() {
  local flags=(--accelerator-type="$ACCELERATOR_TYPE" --version="$RUNTIME_VERSION")
  if (( SPOT )); then flags+=(--spot); fi
  run gcloud compute tpus tpu-vm create "$NAME" "${GCLOUD_FLAGS[@]}" "${flags[@]}"
}

step_copy() {
  # The checkout as git sees it (tracked and untracked files, minus .gitignore'd ones such as
  # prepared/ and workdirs/), or the whole folder without VCS data outside git.
  local tarball="${TMPDIR:-/tmp}/samplecnn_jax-$NAME.tar.gz"
  if [[ -e "$REPO/.git" ]]; then  # A file in git worktrees.
    run_shell "git -C $(quote "$REPO") ls-files -z -co --exclude-standard | tar -czf $(quote "$tarball") -C $(quote "$REPO") --null -T -"
  else
    run tar -czf "$tarball" -C "$REPO" --exclude-vcs --exclude=prepared --exclude=workdirs .
  fi
  run gcloud compute tpus tpu-vm scp "$tarball" "$NAME:$REMOTE_DIR.tar.gz" "${GCLOUD_FLAGS[@]}" \
    --worker=all
  on_all_workers "rm -rf ~/$REMOTE_DIR && mkdir -p ~/$REMOTE_DIR && tar -xzf ~/$REMOTE_DIR.tar.gz -C ~/$REMOTE_DIR"
}

step_install() {
  # jax 0.12 needs Python >= 3.12; TPU images ship 3.10, so uv provides 3.12 when missing.
  on_all_workers "set -e; cd ~/$REMOTE_DIR; if command -v python3.12 > /dev/null; then python3.12 -m venv ~/$VENV; else python3 -m pip install --user -q uv && python3 -m uv venv --seed --python 3.12 ~/$VENV; fi; ~/$VENV/bin/pip install -q -e \".[tpu]\""
}

step_data() {
  on_all_workers "mkdir -p $(quote "$DATA_DIR") && gcloud storage rsync --recursive $(quote "$DATA_SRC") $(quote "$DATA_DIR")"
}

main_command() {  # The training command as one line for the workers' shell.
  local args=(-m samplecnn_jax.main "--config=$CONFIG" "--workdir=$WORKDIR" --distributed)
  if [[ -n "$DATA_DIR" ]]; then args+=("--config.data_dir=$DATA_DIR"); fi
  args+=(${EXTRA[@]+"${EXTRA[@]}"})
  # shellcheck disable=SC2088  # The workers' shell expands this ~.
  local line="~/$VENV/bin/python" arg
  for arg in "${args[@]}"; do line+=" $(quote "$arg")"; done
  printf '%s' "$line"
}

step_run() {
  local command
  command="$(main_command)"
  if (( DETACH )); then
    on_all_workers "cd ~/$REMOTE_DIR && nohup $command > ~/$REMOTE_LOG 2>&1 < /dev/null &"
    echo "# started in the background; follow worker 0 with: launch/tpu_vm.sh logs --name=$NAME --zone=$ZONE"
  else
    # Status 3 on a worker: stopped by SIGTERM/SIGINT (a Spot VM's preemption notice) after
    # saving the latest checkpoint; `run` again resumes there.
    local after="status=\$?; if [ \$status -eq $EXIT_PREEMPTED ]; then"
    after+=" echo '$SCRIPT_NAME: $PREEMPTED_MESSAGE'; fi; exit \$status"
    on_all_workers "set -o pipefail; cd ~/$REMOTE_DIR && $command 2>&1 | tee ~/$REMOTE_LOG; $after"
  fi
}

step_logs() {
  run gcloud compute tpus tpu-vm ssh "$NAME" "${GCLOUD_FLAGS[@]}" --worker=0 \
    --command="tail -n +1 -F ~/$REMOTE_LOG"
}

step_ssh() {
  local line="" arg
  for arg in "${EXTRA[@]}"; do line+="${line:+ }$arg"; done
  on_all_workers "$line"
}

step_delete() {
  run gcloud compute tpus tpu-vm delete "$NAME" "${GCLOUD_FLAGS[@]}" --quiet
}

delete_on_exit() {  # Deletes the VM however `all` ends, keeping the failing step's status.
  local status=$?
  step_delete || true
  exit "$status"
}

case "$STEP" in
  all)
    if (( DELETE_AFTER )); then
      trap delete_on_exit EXIT
    fi
    step_create
    step_copy
    step_install
    if [[ -n "$DATA_SRC" ]]; then step_data; fi
    step_run
    ;;
  *) "step_$STEP" ;;
esac
