#!/usr/bin/env bash
# One session on a lent GPU, in one call: what the CPU cannot measure.
#
#   1. versions and the device;
#   2. the judge for Inception Score / Frechet distance: mnist_fast trained on the GPU;
#   3. wgan_gp_mnist (experiments/gan_mnist.py --config wgan_gp_mnist) resumed stage by
#      stage to more epochs, scored after each stage, while the time budget lasts;
#   4. benchmarks/peers.py --gpu at batch 128 and 512 (jdl, the hand-written Flax step
#      and scan epoch, PyTorch eager and torch.compile; MLP, CNN, ResNet-20), then jdl alone with
#      --jdl-deterministic false (XLA's default kernels, as the other peers have), unless
#      PEERS_ARGS already names --jdl-deterministic;
#   5. mixed precision: mnist_cnn in float32 and with bfloat16 compute;
#   6. the parallel modes (none, data, shard_map) on the machine's devices: mnist_cnn;
#   7. bitwise reproducibility: benchmarks/gpu_determinism.sh (mnist_cnn, 3 epochs, four
#      runs: --config.deterministic=false twice, =true twice);
#   8. the static loop's open questions (benchmarks/gpu_static_checks.py: a resume with
#      another block size, the parallel modes, lax.cond in a loop; loop_body_ops.py: the
#      kernels of one step in the loop, jdl's and flax_scan's), what costs jdl's MLP
#      its gap to the hand-written scan epoch (jdl at batch 128 as it is and with
#      nonfinite_check=block, scan_chunk=1600 and metrics=(), beside flax_scan), and
#      ResNet-20 at batch 512 (jdl, flax_scan); GPU peak memory is in each peers row;
#   9. optional extra command (GPU_EXTRA).
#
# Usage, from the repository root on the GPU machine:
#   bash benchmarks/gpu_session.sh OUT_DIR MNIST_DIR [WGAN_SECONDS] [PEERS_SECONDS]
# Python packages that the machine lacks (ml_collections, tensorboardX) are installed
# from wheels in .whl/ when that folder exists. The console goes to OUT_DIR/log.txt;
# logs, results and figures of every stage are packed into OUT_DIR/session.tgz after
# each stage, so a call cut short still returns what finished. WGAN_STAGES (epoch
# counts) and PEERS_ARGS override the defaults (for a dry run on a CPU); PHASES picks
# stages (default all: judge,wgan,mixed,peers,parallel,determinism,static,extra), so a
# session can split them over two calls.
set -u
OUT=${1:?OUT_DIR}
DATA=${2:?MNIST_DIR}
WGAN_SECONDS=${3:-240}
PEERS_SECONDS=${4:-280}
WGAN_STAGES=${WGAN_STAGES:-50 100 150 200 300 400}
PEERS_ARGS=${PEERS_ARGS:---gpu --batch-sizes 128,512 --timeout 150}
PHASES=${PHASES:-judge,wgan,mixed,peers,parallel,determinism,static,extra}
want() { [[ ",$PHASES," == *",$1,"* ]]; }
mkdir -p "$OUT"
W=$(mktemp -d)
exec > >(tee -a "$OUT/log.txt") 2>&1
snapshot() { cp runs/wgan_gp_mnist/*/metrics.jsonl "$W/wgan_metrics.jsonl" 2>/dev/null
             tar czf "$OUT/session.tgz.part" -C "$W" . && mv "$OUT/session.tgz.part" "$OUT/session.tgz"; }
export PYTHONUNBUFFERED=1
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
start=$(date +%s)
elapsed() { echo $(( $(date +%s) - start )); }

{
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv
  python3 -c "import sys, jax, flax, optax, orbax.checkpoint as o, torch; \
print(sys.version.split()[0], 'jax', jax.__version__, 'flax', flax.__version__, 'optax', \
optax.__version__, 'orbax', o.__version__, 'torch', torch.__version__); print(jax.devices())"
} 2>&1 | tee "$W/versions.txt"

if want judge; then
echo "== [$(elapsed) s] judge: mnist_fast on the GPU"
python3 -m jdl.cli train --config mnist_fast --workdir runs/mnist_fast ${JUDGE_ARGS:-} \
  --config.data_dir="$DATA" --config.download=false 2>&1 | tail -5 | tee "$W/judge.txt"
python3 -m jdl.cli evaluate --workdir runs/mnist_fast 2>&1 | tail -1 | tee -a "$W/judge.txt"
snapshot
fi

if want wgan; then
echo "== [$(elapsed) s] wgan_gp_mnist, stages while ${WGAN_SECONDS} s last"
wgan_start=$(date +%s)
read -r -a stages <<< "$WGAN_STAGES"
for i in "${!stages[@]}"; do
  epochs=${stages[$i]}
  python3 experiments/gan_mnist.py --config wgan_gp_mnist --data_dir "$DATA" \
    --classifier runs/mnist_fast --workdir runs/wgan_gp_mnist --epochs "$epochs" \
    --out "$W/wgan_$epochs" > "$W/wgan_$epochs.log" 2>&1
  rc=$?
  tail -12 "$W/wgan_$epochs.log"
  took=$(( $(date +%s) - wgan_start ))
  echo "wgan_gp_mnist $epochs epochs: exit $rc, ${took} s since the first stage"
  snapshot
  [ "$rc" -ne 0 ] && break
  # Stop when the next stage, at the pace so far, would overrun the budget.
  next=${stages[$((i + 1))]:-}
  [ -z "$next" ] && break
  python3 -c "import sys; sys.exit(0 if $took * $next / $epochs < $WGAN_SECONDS else 1)" || break
done
fi

if want peers; then
echo "== [$(elapsed) s] peers (timeout ${PEERS_SECONDS} s): $PEERS_ARGS"
# shellcheck disable=SC2086
timeout "$PEERS_SECONDS" python3 benchmarks/peers.py $PEERS_ARGS \
  --out "$W/peers_gpu.json" --md "$W/peers_gpu.md" 2>&1 | tee "$W/peers_gpu.log"
snapshot
if [[ "$PEERS_ARGS" != *--jdl-deterministic* ]]; then  # Else it ran as asked.
echo "== [$(elapsed) s] jdl again with XLA's default kernels (the other peers' kind)"
# shellcheck disable=SC2086
timeout "$PEERS_SECONDS" python3 benchmarks/peers.py $PEERS_ARGS --peers jdl \
  --jdl-deterministic false --out "$W/peers_gpu_jdl_nondet.json" 2>&1 \
  | tee "$W/peers_gpu_jdl_nondet.log"
snapshot
fi
fi

# mnist_cnn for its 6 epochs under one setting: run NAME KEY VALUE.
train_cnn() {
  rm -rf "runs/mnist_cnn_$1"  # A fresh run: a finished one would be reused, training nothing.
  python3 -m jdl.cli train --config mnist_cnn --workdir "runs/mnist_cnn_$1" \
    --config.data_dir="$DATA" --config.download=false "--config.$2=$3" \
    --config.tensorboard=false > "$W/mnist_cnn_$1.log" 2>&1
  echo "$2=$3: exit $?"
  grep -E "^epoch|^test|devices" "$W/mnist_cnn_$1.log" | tail -4
  cp "runs/mnist_cnn_$1/metrics.jsonl" "$W/mnist_cnn_$1.jsonl" 2>/dev/null
}

if want mixed; then
echo "== [$(elapsed) s] mixed precision: mnist_cnn (6 epochs) in float32, then bfloat16 compute"
for mp in false true; do train_cnn "bf16_$mp" mixed_precision "$mp"; done
snapshot
fi

if want parallel; then
echo "== [$(elapsed) s] parallel modes on this machine's devices: mnist_cnn, 6 epochs each"
for mode in none data shard_map; do train_cnn "par_$mode" parallel "$mode"; done
snapshot
fi

if want determinism; then
echo "== [$(elapsed) s] determinism: mnist_cnn, 3 epochs, deterministic=false x2, true x2"
bash benchmarks/gpu_determinism.sh "$W/determinism" "$DATA" 3 2>&1 | tee "$W/determinism.log"
snapshot
fi

if want static; then
echo "== [$(elapsed) s] static loop: checks, the MLP's gap to flax_scan, ResNet-20 at 512"
python3 benchmarks/gpu_static_checks.py --out "$W/static_checks.json" 2>&1 \
  | tee "$W/static_checks.log"
python3 benchmarks/loop_body_ops.py --by-source > "$W/loop_body_ops.txt" 2>&1
head -4 "$W/loop_body_ops.txt"
snapshot
python3 benchmarks/peers.py --gpu --batch-sizes 128 --models mlp --peers jdl,flax_scan \
  --jdl-deterministic false --timeout 90 --out "$W/static_mlp.json" 2>&1 \
  | tee "$W/static_mlp.log"
snapshot
for s in nonfinite_check=block scan_chunk=1600 'metrics=()'; do
  python3 benchmarks/peers.py --gpu --batch-sizes 128 --models mlp --peers jdl \
    --jdl-deterministic false --jdl-set "$s" --timeout 90 \
    --out "$W/static_mlp_${s//[^a-z0-9_]/_}.json" 2>&1 | tee -a "$W/static_mlp_sets.log"
  snapshot
done
python3 benchmarks/peers.py --gpu --batch-sizes 512 --models resnet20 --peers jdl,flax_scan \
  --jdl-deterministic false --timeout 150 --out "$W/static_resnet20_512.json" 2>&1 \
  | tee "$W/static_resnet20_512.log"
snapshot
fi

if want extra && [ -n "${GPU_EXTRA:-}" ]; then
  echo "== [$(elapsed) s] extra: $GPU_EXTRA"
  bash -c "$GPU_EXTRA" 2>&1 | tee "$W/extra.log"
  snapshot
fi
echo "== [$(elapsed) s] done"
