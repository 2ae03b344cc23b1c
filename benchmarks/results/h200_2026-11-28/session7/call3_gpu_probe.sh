set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit
export PYTHONUNBUFFERED=1
D=.gpu/mnist
P="python3 benchmarks/peers.py --gpu --peers jdl --timeout 60"
EX="--xla_gpu_deterministic_ops=false --xla_gpu_exclude_nondeterministic_ops=true"
echo "== 1 speed, exclude_nondeterministic_ops only"
XLA_FLAGS="$EX" timeout 120 $P --batch-sizes 128,512 --models mlp,cnn --out $OUT/excl.json 2>&1 | grep -E "^(mlp|cnn) "
echo "== 2 reproducibility, exclude_nondeterministic_ops only"
for r in a b; do
  XLA_FLAGS="$EX" timeout 60 python3 -m jdl.cli train --config mnist_cnn --workdir runs/ex_$r --config.data_dir=$D \
    --config.download=false --config.num_epochs=3 --config.tensorboard=false > $OUT/ex_$r.log 2>&1; echo "run $r exit $?"
  cp runs/ex_$r/metrics.jsonl $OUT/ex_$r.jsonl
done
python3 - $OUT <<'PY'
import json, sys
T = {"epoch_seconds", "samples_per_sec", "compile_seconds"}
rows = [[{k: v for k, v in json.loads(l).items() if k not in T} for l in open(f"{sys.argv[1]}/ex_{r}.jsonl")] for r in "ab"]
print("exclude-only runs:", "bitwise equal" if rows[0] == rows[1] else "DIFFER", len(rows[0]), "rows")
PY
grep -h "samples/s" $OUT/ex_*.log | tail -4
echo "== 3 pooling on GPU, nondeterministic kernels, cnn"
for p in reshape reduce_window; do
  JDL_POOL_PROBE=$p XLA_FLAGS=--xla_gpu_deterministic_ops=false timeout 90 $P --batch-sizes 128,512 --models cnn --out $OUT/pool_$p.json 2>&1 | grep -E "^cnn "
  echo "pool $p done"
done
