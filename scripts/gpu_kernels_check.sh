#!/usr/bin/env bash
# Kernel GPU tests and benchmarks in one go (GPU machine, repo root, SGLang 0.5.16 installed through
# ../shared/gpu-harness for the baselines). Logs and tables go to $OUT. Every step has its own timeout so
# one slow step cannot eat the call; benchmarks print rows as they go.
#   OPS="sparse_mla indexer topk mhc fp8_gemm moe_mxfp4" MMA="off on" bash scripts/gpu_kernels_check.sh
set -u
OUT=${OUT:-/tmp/sm120-kernels}
mkdir -p "$OUT"
export PYTHONPATH=. PYTHONUNBUFFERED=1
OPS=${OPS:-"sparse_mla indexer topk mhc fp8_gemm moe_mxfp4"}
MMA=${MMA:-"off"}        # off = DISABLE_MMA_V3=1 (SM12x-style mma.sync), on = Triton default
BENCH=${BENCH-"sparse_mla indexer mhc moe_gemm"}  # BENCH="" runs no benchmark
TEST_TIMEOUT=${TEST_TIMEOUT:-240}
BENCH_TIMEOUT=${BENCH_TIMEOUT:-180}
BENCH_MMA=${BENCH_MMA:-both}  # --mma-v3 of the benchmarks: both | off | on

for mode in $MMA; do
  files=$(for op in $OPS; do printf 'tests/test_%s.py ' "$op"; done)
  if [ "$mode" = off ]; then export DISABLE_MMA_V3=1; else unset DISABLE_MMA_V3; fi
  echo "== GPU tests, DISABLE_MMA_V3=${DISABLE_MMA_V3:-unset}: $OPS"
  timeout "$TEST_TIMEOUT" python3 -m pytest -q -m gpu -p no:cacheprovider --tb=line -rf $files \
    > "$OUT/gpu_tests_mma_$mode.log" 2>&1
  echo "exit $?"; tail -5 "$OUT/gpu_tests_mma_$mode.log"
done

unset DISABLE_MMA_V3  # the benchmarks set it per column (--mma-v3)
for b in $BENCH; do
  echo "== bench_$b"
  timeout "$BENCH_TIMEOUT" python3 "scripts/bench_$b.py" --mma-v3 "$BENCH_MMA" --out "$OUT/bench_$b.md" \
    > "$OUT/bench_$b.log" 2>&1
  echo "exit $?"; tail -30 "$OUT/bench_$b.log"
done
