"""Where the time of an MLP training step goes on this machine, part by part.

Usage:  python benchmarks/mlp_breakdown.py [--out FILE.json]

The MLP 784-512-512-10 of benchmarks/peers.py at batch 128, MNIST-shaped random data.
Each variant is one jitted ``lax.scan`` over 100 steps, timed as the median of 7 calls
after a warm-up, so the figures are per step with no host work at all. The variants
add one part at a time to the previous one:

- ``forward``: the loss only;
- ``gradients``: the loss and its gradients (every gradient summed, so none is
  dropped as dead code);
- ``sgd``: plus an SGD update;
- ``adam``: plus Adam instead (optax.adam);
- ``adam_gather``: plus the batch gathered by a random permutation from the whole
  on-device data set (what jdl's scan does) instead of contiguous slices;
- ``jdl_optimizer_gather``: jdl's optimizer chain from the default config instead of
  optax.adam;
- ``jdl_optimizer_gather_nonfinite``: plus jdl's non-finite guard
  (:func:`jdl.train.steps.nonfinite_info`).

Then jdl's own ``fit`` on the same data (median of epochs 2-3), for comparison. The
percentage is of a jitted 2048x2048 float32 matmul measured in the same process.
Training FLOPs come from XLA's cost analysis of the ``adam`` step.
"""

from __future__ import annotations

import json
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import jdl
from jdl import optim
from jdl.data import Dataset
from jdl.train import steps as steps_lib

from _cli import ArgumentParser, out_file
from _provenance import provenance

BATCH, STEPS, N = 128, 100, 128 * 800


class MLP(nn.Module):

  @nn.compact
  def __call__(self, x):
    x = x.reshape(x.shape[0], -1)
    x = nn.relu(nn.Dense(512)(x))
    x = nn.relu(nn.Dense(512)(x))
    return nn.Dense(10)(x)


VARIANTS = ("forward", "gradients", "sgd", "adam", "adam_gather", "jdl_optimizer_gather",
            "jdl_optimizer_gather_nonfinite")


def make_run(kind: str, model: MLP):
  """A jitted ``run(params, x, y, perm) -> (params, loss_sum)`` of STEPS steps."""
  if kind.startswith("jdl_optimizer"):
    tx = optim.create_optimizer(jdl.base_config(), steps_per_epoch=N // BATCH, num_epochs=3)
  else:
    tx = optax.sgd(1e-3) if kind == "sgd" else optax.adam(1e-3)

  def loss_fn(params, xb, yb):
    logits = model.apply(params, xb)
    return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

  def run(params, x, y, perm):
    opt_state = tx.init(params)

    def body(carry, i):
      params, opt_state, total = carry
      if kind.endswith("gather") or kind.endswith("nonfinite"):
        idx = perm[i]
      else:
        idx = i * BATCH + jnp.arange(BATCH)
      xb, yb = x[idx], y[idx]
      if kind == "forward":
        return (params, opt_state, total + loss_fn(params, xb, yb)), None
      loss, grads = jax.value_and_grad(loss_fn)(params, xb, yb)
      if kind == "gradients":
        return (params, opt_state, total + loss + sum(jnp.sum(g) for g in
                                                      jax.tree.leaves(grads))), None
      if kind.endswith("nonfinite"):
        info = steps_lib.nonfinite_info(loss, grads, i)
        loss = jnp.where(info["count"] > 0, 0.0, loss)
      updates, opt_state = tx.update(grads, opt_state, params)
      return (optax.apply_updates(params, updates), opt_state, total + loss), None

    (params, _, total), _ = jax.lax.scan(body, (params, opt_state, 0.0), jnp.arange(STEPS))
    return params, total

  return jax.jit(run)


def step_flops(model: MLP, params, xb, yb) -> float:
  """XLA's FLOP count of one Adam step (a scan's body would be counted once)."""
  tx = optax.adam(1e-3)

  def step(params, opt_state):
    loss_fn = lambda p: optax.softmax_cross_entropy_with_integer_labels(  # noqa: E731
        model.apply(p, xb), yb).mean()
    grads = jax.grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  cost = jax.jit(step).lower(params, tx.init(params)).compile().cost_analysis()
  return float((cost[0] if isinstance(cost, (list, tuple)) else cost)["flops"])


def time_call(fn, *args, repeats: int = 7) -> float:
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  return float(np.median(times))


def matmul_gflops(size: int = 2048) -> float:
  a = jnp.ones((size, size), jnp.float32)
  f = jax.jit(lambda a: a @ a)
  return 2 * size**3 / time_call(f, a, repeats=10) / 1e9


def jdl_fit_rate(x: np.ndarray, y: np.ndarray) -> float:
  ds = Dataset(x_train=x.reshape(-1, 28, 28, 1), y_train=y,
               x_test=x[:256].reshape(-1, 28, 28, 1), y_test=y[:256], num_classes=10,
               task="classification", name="bench", input_shape=(28, 28, 1))
  config = jdl.base_config()
  config.model = {"name": "mlp", "hidden": (512, 512)}
  config.update(dict(batch_size=BATCH, num_epochs=3, validation_split=0.0, normalize="none",
                     tensorboard=False, plots=False, monitor=""))
  trainer = jdl.fit(config, None, dataset=ds, quiet=True).trainer
  return float(np.median(trainer.epoch_rates[1:]))


def main() -> None:
  parser = ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", type=out_file, default=None)
  args = parser.parse_args()
  rng = np.random.default_rng(0)
  x_np = rng.random((N, 784), dtype=np.float32)
  y_np = rng.integers(0, 10, N).astype(np.int32)
  x, y = jnp.asarray(x_np), jnp.asarray(y_np)
  perm = jnp.asarray(rng.permutation(N)[:STEPS * BATCH].reshape(STEPS, BATCH))
  model = MLP()
  params = model.init(jax.random.key(0), x[:2])
  peak = matmul_gflops()
  flops = step_flops(model, params, x[:BATCH], y[:BATCH]) / BATCH
  print(f"matmul peak {peak:.1f} GFLOP/s; training FLOPs {flops / 1e6:.2f} M per example")
  rows = []
  for kind in VARIANTS:
    ms = 1e3 * time_call(make_run(kind, model), params, x, y, perm) / STEPS
    rate = BATCH / ms * 1e3
    rows.append({"variant": kind, "ms_per_step": round(ms, 3), "samples_per_s": round(rate)})
    print(f"{kind:32s} {ms:6.3f} ms/step {rate:9,.0f} samples/s"
          + (f"  {100 * rate * flops / (peak * 1e9):5.1f}% of peak" if kind != "forward" else ""))
  rate = jdl_fit_rate(x_np, y_np)
  rows.append({"variant": "jdl_fit", "ms_per_step": round(BATCH / rate * 1e3, 3),
               "samples_per_s": round(rate)})
  print(f"{'jdl fit':32s} {BATCH / rate * 1e3:6.3f} ms/step {rate:9,.0f} samples/s"
        f"  {100 * rate * flops / (peak * 1e9):5.1f}% of peak")
  if args.out:
    with open(args.out, "w") as f:
      json.dump({"matmul_gflops": peak, "flops_per_example": flops, "rows": rows,
                 "provenance": provenance()}, f, indent=2)


if __name__ == "__main__":
  main()
