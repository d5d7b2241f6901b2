#!/usr/bin/env bash
# Foundation check on the GPU machine (H100/H200 with SGLang 0.5.16 installed through
# ../shared/gpu-harness and this package installed with pip). Writes logs to $OUT.
#   1. doctor under emulate lists the patches;
#   2. bench_one_batch (in-process) under emulate + poison fails fast with SM120PoisonError;
#   3. launch_server under emulate + poison: the error surfaces in the spawned scheduler process;
#   4. bench_one_batch under SGLANG_SM120=off runs like the native baseline (SKIP_BASELINE=1 skips it).
set -u
OUT=${OUT:-/tmp/sm120-check}
mkdir -p "$OUT"
MODEL=${MODEL:-/tmp/tiny}
[ -f "$MODEL/config.json" ] || python3 /tmp/gpu/make_tiny_dsv4.py "$MODEL" 5
export SGLANG_JIT_DEEPGEMM_PRECOMPILE=0 PYTHONUNBUFFERED=1
BENCH=(python3 -m sglang.bench_one_batch --model-path "$MODEL" --load-format dummy --input-len 256
       --output-len 16 --trust-remote-code --mem-fraction-static 0.8 --cuda-graph-max-bs 8)

echo "== 1. doctor (emulate)"
SGLANG_SM120=emulate sglang-sm120 doctor 2>&1 | tee "$OUT/doctor_emulate.txt" | tail -40

echo "== 2. bench_one_batch, emulate + poison"
t0=$(date +%s)
SGLANG_SM120=emulate DISABLE_MMA_V3=1 timeout 300 "${BENCH[@]}" --batch-size 1 > "$OUT/bench_emulate.log" 2>&1
echo "exit $? after $(( $(date +%s) - t0 )) s"
grep -m3 -n "SM120PoisonError" "$OUT/bench_emulate.log"

echo "== 3. launch_server, emulate + poison"
t0=$(date +%s)
SGLANG_SM120=emulate timeout 300 python3 -m sglang.launch_server --model-path "$MODEL" --load-format dummy \
  --trust-remote-code --mem-fraction-static 0.8 --cuda-graph-max-bs 8 --port 31234 > "$OUT/server_emulate.log" 2>&1
echo "exit $? after $(( $(date +%s) - t0 )) s"
grep -m3 -n "SM120PoisonError" "$OUT/server_emulate.log"
grep -m3 -n "Scheduler\|scheduler" "$OUT/server_emulate.log" | head -3

[ "${SKIP_BASELINE:-0}" = 1 ] && exit 0
echo "== 4. bench_one_batch, plugin off (native baseline)"
t0=$(date +%s)
SGLANG_SM120=off SGLANG_DSV4_FP4_EXPERTS=0 timeout 420 "${BENCH[@]}" --batch-size 1 8 > "$OUT/bench_off.log" 2>&1
echo "exit $? after $(( $(date +%s) - t0 )) s"
grep -E "Decode|median|Prefill|Total" "$OUT/bench_off.log" | tail -12
