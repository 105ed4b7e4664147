#!/usr/bin/env bash
# The GPU check of the training issue, as one run of a few minutes on a machine with a GPU.
#
# Steps (each printed as `+ ...` before it runs, its output in OUT/NAME.log; a failing step is
# reported and the others still run; the exit status is 1 if any failed):
#   1. install `.[cuda]` with pip (PyPI only), unless --no-install; --wheels DIR installs
#      carried wheels instead (for a machine without network whose python has CUDA JAX);
#   2. nvidia-smi, and a check that JAX's default backend is the GPU;
#   3. the test suite's fast subset on the GPU (`python -m pytest -x -q`, FAST_TESTS below);
#   4. benchmarks/train_step_speed.py for mtat, speech_commands, dcase x samplecnn,
#      rese2_multi in bfloat16 and in float32 (JAX only: examples/s, step FLOP/s as a fraction
#      of a bf16 and an f32 matmul measured in the same run, peak device memory);
#   5. the README's first command (prepare demo, train configs/demo.py) with
#      --config.num_train_steps=200, in float32 and in bfloat16;
#   6. benchmarks/gpu_summary.py: the targets (bf16 rese2_multi/mtat step >= 35% of the bf16
#      matmul; bf16 and f32 losses within 2% after 200 steps) -> OUT/summary.md.
# OUT is $OUT when set (the device tool's output folder), else ./gpu_check_out.
#
#   bash benchmarks/gpu_check.sh [--dry-run] [--no-install] [--wheels=DIR] [--python=PY]
#
# Flags:
#   --dry-run       print the commands only (runs nothing, needs no GPU)
#   --no-install    use PY's installed packages (it must have a CUDA JAX and the deps)
#   --wheels=DIR    pip install DIR/*.whl --no-index --no-deps into a scratch folder first
#   --python=PY     interpreter (default python3)

set -uo pipefail

BENCH_DIR=${BASH_SOURCE[0]%/*}
[[ "$BENCH_DIR" == "${BASH_SOURCE[0]}" ]] && BENCH_DIR=.
REPO="$(cd "$BENCH_DIR/.." && pwd)"
SCRIPT_NAME=gpu_check.sh
# shellcheck source=launch/common.sh
source "$REPO/launch/common.sh"  # quote, run

die() {
  echo "${SCRIPT_NAME}: error: $*" >&2
  echo "Run 'bash benchmarks/${SCRIPT_NAME} --help' for the flags." >&2
  exit 2
}

usage() {
  sed -n '2,/^$/s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
}

FAST_TESTS=(tests/test_layers.py tests/test_models.py tests/test_metrics.py)
CONFIGS=mtat,speech_commands,dcase
VARIANTS=rese2_multi,samplecnn
DEMO_STEPS=200

DRY_RUN=0
INSTALL=1
WHEELS=""
PY=python3
while (( $# )); do
  case "$1" in
    -h | --help) usage; exit 0 ;;
    --dry-run) DRY_RUN=1 ;;
    --no-install) INSTALL=0 ;;
    --wheels=*) WHEELS="${1#*=}" ;;
    --python=*) PY="${1#*=}" ;;
    *) die "unknown flag $1" ;;
  esac
  shift
done
[[ -z "$WHEELS" || -d "$WHEELS" || $DRY_RUN == 1 ]] || die "--wheels=$WHEELS is not a folder"

OUT_DIR="${OUT:-$REPO/gpu_check_out}"
WORK="$OUT_DIR/work"  # Prepared demo data, workdirs, the JAX compilation cache.
FAILED=()

step() {  # step NAME TIMEOUT_S CMD...: prints the command, runs it with its log in OUT/NAME.log.
  local name="$1" limit="$2" line="+" arg
  shift 2
  for arg in "$@"; do line+=" $(quote "$arg")"; done
  printf '%s > %s\n' "$line" "$(quote "$OUT_DIR/$name.log")"
  (( DRY_RUN )) && return 0
  local start=$SECONDS
  timeout "$limit" "$@" > "$OUT_DIR/$name.log" 2>&1
  local rc=$?
  echo "  $name: exit $rc after $(( SECONDS - start )) s"
  (( rc == 0 )) || FAILED+=("$name (exit $rc)")
  return 0
}

cd "$REPO" || die "cannot enter $REPO"
run mkdir -p "$OUT_DIR" "$WORK"
(( DRY_RUN )) || echo "outputs in $OUT_DIR"

# A persistent compilation cache: the benchmark's memory subprocesses reuse its compiles.
export JAX_COMPILATION_CACHE_DIR="$WORK/jax_cache"
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0
export XLA_PYTHON_CLIENT_PREALLOCATE=false
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"

# 1. Install.
if [[ -n "$WHEELS" ]]; then
  step install_wheels 300 "$PY" -m pip install -q --no-index --no-deps --no-compile \
    --target "$WORK/site" "$WHEELS"/*.whl
  export PYTHONPATH="$PYTHONPATH:$WORK/site"
fi
if (( INSTALL )); then
  step install 600 "$PY" -m pip install -q -e ".[cuda,dev]"
fi

# 2. The GPU is there and JAX uses it.
step nvidia_smi 60 nvidia-smi
step backend 120 "$PY" -c "import jax; print(jax.__version__, jax.devices()); \
assert jax.default_backend() == 'gpu', 'JAX does not use a GPU: ' + jax.default_backend()"

# 3. Fast tests on the GPU.
step tests 240 "$PY" -m pytest -x -q -p no:cacheprovider "${FAST_TESTS[@]}"

# 4. Train-step benchmark, bf16 then f32 (mtat rese2_multi first: the target's row).
for dtype in bfloat16 float32; do
  step "train_step_$dtype" 420 "$PY" benchmarks/train_step_speed.py --no-torch \
    --configs "$CONFIGS" --variants "$VARIANTS" --dtype "$dtype" --matmul bfloat16,float32 \
    --rounds 5 --steps 10 --memory-steps 3 --json "$OUT_DIR/train_step_$dtype.json"
done

# 5. The README's first command, 200 steps, float32 and bfloat16.
step prepare_demo 180 "$PY" -m samplecnn_jax.prepare demo --out "$WORK/prepared/demo"
for dtype in float32 bfloat16; do
  step "demo_$dtype" 300 "$PY" -m samplecnn_jax.main --config=configs/demo.py \
    --workdir="$WORK/demo_$dtype" --config.data_dir="$WORK/prepared/demo" \
    --config.num_train_steps=$DEMO_STEPS --config.model.dtype=$dtype
done

# 6. Targets.
step summary 60 "$PY" benchmarks/gpu_summary.py "$OUT_DIR" --demo-steps "$DEMO_STEPS"
(( DRY_RUN )) && exit 0
cat "$OUT_DIR/summary.log"
if (( ${#FAILED[@]} )); then
  echo "failed steps: ${FAILED[*]}" >&2
  exit 1
fi
