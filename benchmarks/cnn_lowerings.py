"""The Flax-example CNN on XLA:CPU: where a step's time goes, and other conv lowerings.

Usage:  python benchmarks/cnn_lowerings.py [--out FILE.json]

Everything runs inside a jitted ``lax.scan`` of 20 steps at batch 128 (as jdl's epochs
do), timed as the median of 5 calls after a warm-up; the figures are ms per step.

1. ``step``: the CNN (conv32-avgpool-conv64-avgpool-256-10, jdl's patches ``Conv``)
   forward only, loss and gradients, and a full Adam step; then the same with the
   second convolution replaced by a channel copy, which isolates conv2's share.
2. ``conv2``: the second convolution alone (14x14x32 -> 64, 3x3 'SAME'), forward and
   forward+backward (gradients of the kernel and the input), in four lowerings:
   ``patches`` (jdl: the nine shifted views concatenated on the channel axis, one
   matmul of K = 288), ``width_concat`` (three width shifts concatenated, three
   matmuls of K = 96 over height-shifted rows), ``stack`` (nine views on a leading
   axis, one einsum), ``height_concat`` (three height shifts concatenated, one matmul
   of N = 192, then three width-shifted sums).
3. ``conv1``: the first convolution (one input channel -> 32), kernel gradient only,
   as ``patches``, as nine shifted multiply-adds, and as XLA's convolution.
4. ``lowering``: jdl's ``patches`` against its ``hybrid`` lowering
   (:func:`jdl.models.conv.conv_hybrid`), forward and backward, on ResNet-20's three
   3x3 shapes (32x32x16 -> 16, 16x16x32 -> 32, 8x8x64 -> 64) and on this CNN's
   conv2 and conv1: the measurements behind ``conv_impl='auto'``'s choice on CPU.

``--parts`` picks a subset (default: all).
"""

from __future__ import annotations

import itertools
import json
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jdl.models.conv import Conv, conv_hybrid, conv_patches

from _cli import ArgumentParser, out_file
from _provenance import provenance

B, STEPS = 128, 20


def time_per_step(fn, *args) -> float:
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(5):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  return 1e3 * float(np.median(times)) / STEPS


class CNN(nn.Module):
  without_conv2: bool = False

  @nn.compact
  def __call__(self, x):
    x = nn.relu(Conv(32, (3, 3))(x))
    x = x.reshape(B, 14, 2, 14, 2, 32).mean((2, 4))
    if self.without_conv2:
      x = jnp.concatenate([x, x], -1)  # Same shape as conv2's output, no arithmetic.
    else:
      x = nn.relu(Conv(64, (3, 3))(x))
    x = x.reshape(B, 7, 2, 7, 2, 64).mean((2, 4))
    x = nn.relu(nn.Dense(256)(x.reshape(B, -1)))
    return nn.Dense(10)(x)


def step_rows(rng) -> list[dict]:
  x = jnp.asarray(rng.random((STEPS, B, 28, 28, 1), dtype=np.float32))
  y = jnp.asarray(rng.integers(0, 10, (STEPS, B)), jnp.int32)
  rows = []
  for without in (False, True):
    model = CNN(without)
    params = model.init(jax.random.key(0), x[0])
    tx = optax.adam(1e-3)

    def loss_fn(p, xb, yb, model=model):
      return optax.softmax_cross_entropy_with_integer_labels(model.apply(p, xb), yb).mean()

    for kind in ("forward", "gradients", "adam_step"):
      def run(p, x, y, kind=kind, loss_fn=loss_fn):
        def body(carry, i):
          p, o, total = carry
          if kind == "forward":
            return (p, o, total + loss_fn(p, x[i], y[i])), None
          loss, g = jax.value_and_grad(loss_fn)(p, x[i], y[i])
          if kind == "gradients":
            return (p, o, total + loss + sum(jnp.sum(a) for a in jax.tree.leaves(g))), None
          updates, o = tx.update(g, o, p)
          return (optax.apply_updates(p, updates), o, total + loss), None
        return jax.lax.scan(body, (p, tx.init(p), 0.0), jnp.arange(STEPS))[0][2]

      ms = time_per_step(jax.jit(run), params, x, y)
      rows.append({"part": "step", "variant": ("without_conv2_" if without else "") + kind,
                   "ms": round(ms, 2)})
  return rows


def scan_forward_backward(conv):
  """A jitted scan of SGD steps on ``mean(relu(conv(x, k))^2)``: forward, both gradients."""
  def run(k, x):
    def body(carry, xb):
      k, total = carry
      loss = lambda k, xb: jnp.mean(jax.nn.relu(conv(xb, k)) ** 2)  # noqa: E731
      value, (gk, gx) = jax.value_and_grad(loss, argnums=(0, 1))(k, xb)
      return (k - 1e-3 * gk, total + value + jnp.sum(gx)), None
    return jax.lax.scan(body, (k, 0.0), x)[0]
  return jax.jit(run)


H, C, F = 14, 32, 64


def _pad(x):
  return jnp.pad(x, [(0, 0), (1, 1), (1, 1), (0, 0)])


def conv2_patches(x, k):
  return conv_patches(x, k, (1, 1), "SAME")


def conv2_width_concat(x, k):
  r = jnp.concatenate([_pad(x)[:, :, j:j + H, :] for j in range(3)], -1)  # [B,H+2,W,3C]
  y = sum(r[:, i:i + H].reshape(-1, 3 * C) @ k[i].reshape(3 * C, F) for i in range(3))
  return y.reshape(B, H, H, F)


def conv2_stack(x, k):
  xp = _pad(x)
  views = jnp.stack([xp[:, i:i + H, j:j + H, :] for i in range(3) for j in range(3)], 0)
  return jnp.einsum("kbhwc,kcf->bhwf", views, k.reshape(9, C, F))


def conv2_height_concat(x, k):
  r = jnp.concatenate([_pad(x)[:, i:i + H, :, :] for i in range(3)], -1)  # [B,H,W+2,3C]
  kernels = jnp.concatenate([k[:, j].reshape(3 * C, F) for j in range(3)], -1)
  z = (r.reshape(-1, 3 * C) @ kernels).reshape(B, H, H + 2, 3, F)
  return sum(z[:, :, j:j + H, j] for j in range(3))


def conv2_rows(rng) -> list[dict]:
  x = jnp.asarray(rng.random((STEPS, B, H, H, C), dtype=np.float32))
  k = jnp.asarray(rng.normal(size=(3, 3, C, F)).astype(np.float32) * 0.1)
  reference = conv2_patches(x[0], k)
  rows = []
  for name, conv in (("patches", conv2_patches), ("width_concat", conv2_width_concat),
                     ("stack", conv2_stack), ("height_concat", conv2_height_concat)):
    err = float(jnp.max(jnp.abs(conv(x[0], k) - reference)))
    assert err < 1e-4, (name, err)

    def forward(k, x, conv=conv):
      return jax.lax.scan(lambda t, xb: (t + jnp.sum(jax.nn.relu(conv(xb, k))), None),
                          0.0, x)[0]

    rows.append({"part": "conv2", "variant": name,
                 "forward_ms": round(time_per_step(jax.jit(forward), k, x), 2),
                 "forward_backward_ms": round(time_per_step(scan_forward_backward(conv), k, x),
                                              2)})
  return rows


def conv1_shifts(x, k):
  xp = _pad(x)
  return sum(xp[:, i:i + 28, j:j + 28, :] * k[i, j, 0]
             for i, j in itertools.product(range(3), range(3)))


def conv1_rows(rng) -> list[dict]:
  x = jnp.asarray(rng.random((STEPS, B, 28, 28, 1), dtype=np.float32))
  k = jnp.asarray(rng.normal(size=(3, 3, 1, 32)).astype(np.float32) * 0.3)
  xla = lambda x, k: jax.lax.conv_general_dilated(  # noqa: E731
      x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
  rows = []
  for name, conv in (("patches", lambda x, k: conv_patches(x, k, (1, 1), "SAME")),
                     ("shifted_multiply_adds", conv1_shifts), ("xla_convolution", xla)):
    def run(k, x, conv=conv):
      loss = lambda k, xb: jnp.mean(jax.nn.relu(conv(xb, k)) ** 2)  # noqa: E731
      return jax.lax.scan(lambda k, xb: (k - 1e-3 * jax.grad(loss)(k, xb), None), k, x)[0]
    rows.append({"part": "conv1", "variant": name,
                 "forward_backward_ms": round(time_per_step(jax.jit(run), k, x), 2)})
  return rows


def lowering_rows(rng) -> list[dict]:
  rows = []
  for h, c, f in ((32, 16, 16), (16, 32, 32), (8, 64, 64), (14, 32, 64), (28, 1, 32)):
    x = jnp.asarray(rng.random((STEPS, B, h, h, c), dtype=np.float32))
    k = jnp.asarray(rng.normal(size=(3, 3, c, f)).astype(np.float32) * 0.1)
    for name, conv in (("patches", lambda x, k: conv_patches(x, k, (1, 1), "SAME")),
                       ("hybrid", lambda x, k: conv_hybrid(x, k, ((1, 1), (1, 1))))):
      rows.append({"part": "lowering", "variant": name, "shape": f"{h}x{h}x{c}->{f}",
                   "forward_backward_ms": round(time_per_step(scan_forward_backward(conv), k,
                                                              x), 2)})
  return rows


PARTS = {"step": step_rows, "conv2": conv2_rows, "conv1": conv1_rows,
         "lowering": lowering_rows}


def main() -> None:
  parser = ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", type=out_file, default=None)
  parser.add_argument("--parts", default=",".join(PARTS))
  args = parser.parse_args()
  names = args.parts.split(",")
  unknown = [p for p in names if p not in PARTS]
  if unknown:
    parser.error(f"unknown --parts {', '.join(unknown)}; valid: {', '.join(PARTS)}")
  rng = np.random.default_rng(0)
  rows = []
  for part in (PARTS[p] for p in names):
    for row in part(rng):
      rows.append(row)
      print(json.dumps(row), flush=True)
  if args.out:
    with open(args.out, "w") as f:
      json.dump({"provenance": provenance(), "rows": rows}, f, indent=2)


if __name__ == "__main__":
  main()
