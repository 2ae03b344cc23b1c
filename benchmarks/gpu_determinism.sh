#!/usr/bin/env bash
# Is training on this GPU reproducible to the bit, with and without XLA's deterministic ops?
#
# Trains mnist_cnn for EPOCHS epochs four times from the same seed: twice with
# --config.deterministic=false (XLA's default GPU kernels), twice with jdl's default
# --config.deterministic=true (jdl puts --xla_gpu_deterministic_ops=true into XLA_FLAGS
# before JAX starts: jdl/train/runtime.py). Then compares the metrics of each pair
# (every loss and accuracy, timing fields left out) and prints whether they are
# bitwise equal, with the speed of each run. XLA_FLAGS must not be set by the caller.
#
# Usage, from the repository root on the GPU machine:
#   bash benchmarks/gpu_determinism.sh OUT_DIR MNIST_DIR [EPOCHS]
set -u
OUT=${1:?OUT_DIR}
DATA=${2:?MNIST_DIR}
EPOCHS=${3:-3}
mkdir -p "$OUT"
for run in default_a default_b det_a det_b; do
  det=false
  [[ $run == det_* ]] && det=true
  rm -rf "runs/det_$run"  # A fresh run: a finished one would be reused, training nothing.
  env -u XLA_FLAGS python3 -m jdl.cli train --config mnist_cnn --workdir "runs/det_$run" \
    --config.data_dir="$DATA" --config.download=false --config.num_epochs="$EPOCHS" \
    --config.tensorboard=false --config.deterministic=$det > "$OUT/det_$run.log" 2>&1
  echo "$run (--config.deterministic=$det): exit $?"
  cp "runs/det_$run/metrics.jsonl" "$OUT/det_$run.jsonl" 2>/dev/null
done
python3 - "$OUT" <<'EOF'
import json, statistics, sys
from jdl.metrics import RECORD_TIMINGS as TIMING
out = sys.argv[1]
def load(run):
  rows = [json.loads(l) for l in open(f"{out}/det_{run}.jsonl")]
  values = [{k: v for k, v in r.items() if k not in TIMING} for r in rows]
  speed = [r["samples_per_sec"] for r in rows if "samples_per_sec" in r][1:]
  return values, statistics.median(speed) if speed else float("nan")
for a, b in [("default_a", "default_b"), ("det_a", "det_b")]:
  (va, sa), (vb, sb) = load(a), load(b)
  diffs = [(x.get("epoch"), x.get("split"), k, x[k], y.get(k))
           for x, y in zip(va, vb) for k in x if x[k] != y.get(k)]
  print(f"{a} vs {b}: {'bitwise equal' if not diffs and len(va) == len(vb) else 'DIFFER'}"
        f" ({len(va)} metric rows); samples/s {sa:,.0f} / {sb:,.0f}")
  for d in diffs[:4]:
    print("   ", d)
EOF
