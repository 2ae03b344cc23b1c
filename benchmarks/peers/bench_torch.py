"""The PyTorch peers: an eager training loop and the same loop on ``torch.compile``
(default mode, or ``reduce-overhead`` with the fused Adam).

On the CPU: one thread per core this process may run on (its CPU affinity;
``os.cpu_count()`` where that is unknown) and denormals flushed to zero, as XLA
does, so that neither framework is slowed by something the other skips. On a CUDA
GPU (``device='cuda'``): the data lives on the GPU, and float32 matmuls may use
TF32 (``torch.set_float32_matmul_precision('high')``), as JAX's default precision
does there (cuDNN convolutions use TF32 in both by default). Images are NCHW,
PyTorch's default layout, converted once before training.
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

import bench_common as common


def _cores() -> int:
  """The cores this process may run on (all of the machine's where that is unknown)."""
  try:
    return len(os.sched_getaffinity(0))
  except (AttributeError, OSError):  # No sched_getaffinity (macOS, Windows).
    return os.cpu_count() or 1


NUM_THREADS = _cores()


def _mlp() -> nn.Module:
  widths = (int(np.prod(common.INPUT_SHAPES["mlp"])), *common.MLP_HIDDEN)
  layers = [nn.Flatten()]
  for fan_in, fan_out in zip(widths[:-1], widths[1:]):
    layers += [nn.Linear(fan_in, fan_out), nn.ReLU()]
  return nn.Sequential(*layers, nn.Linear(widths[-1], common.NUM_CLASSES))


def _cnn() -> nn.Module:
  height, _, channels = common.INPUT_SHAPES["cnn"]
  layers = []
  for width in common.CNN_FEATURES:
    layers += [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2)]
    channels, height = width, height // 2
  return nn.Sequential(
      *layers, nn.Flatten(), nn.Linear(channels * height * height, common.CNN_DENSE),
      nn.ReLU(), nn.Linear(common.CNN_DENSE, common.NUM_CLASSES))


def _conv_bn(fan_in: int, fan_out: int, size: int, stride: int = 1) -> nn.Sequential:
  # momentum=0.1 here is Flax's and Keras's 0.9 (PyTorch weights the new batch).
  return nn.Sequential(
      nn.Conv2d(fan_in, fan_out, size, stride=stride, padding=size // 2, bias=False),
      nn.BatchNorm2d(fan_out, eps=1e-5, momentum=0.1))


class BasicBlock(nn.Module):
  """Two 3x3 conv + BN; a 1x1 conv + BN projection shortcut when the shape changes."""

  def __init__(self, fan_in: int, filters: int, stride: int):
    super().__init__()
    self.branch1 = _conv_bn(fan_in, filters, 3, stride)
    self.branch2 = _conv_bn(filters, filters, 3)
    self.proj = (_conv_bn(fan_in, filters, 1, stride)
                 if stride != 1 or fan_in != filters else None)

  def forward(self, x):
    y = self.branch2(F.relu(self.branch1(x)))
    return F.relu(y + (x if self.proj is None else self.proj(x)))


class ResNet20(nn.Module):
  """CIFAR ResNet-20: 3x3 stem, 3 stages x 3 basic blocks (16/32/64), pool, dense."""

  def __init__(self):
    super().__init__()
    channels = common.INPUT_SHAPES["resnet20"][-1]
    self.stem = _conv_bn(channels, common.RESNET_FILTERS, 3)
    blocks, fan_in = [], common.RESNET_FILTERS
    for i, num_blocks in enumerate(common.RESNET_STAGES):
      filters = common.RESNET_FILTERS * 2**i
      for j in range(num_blocks):
        blocks.append(BasicBlock(fan_in, filters, 2 if i > 0 and j == 0 else 1))
        fan_in = filters
    self.blocks = nn.Sequential(*blocks)
    self.head = nn.Linear(fan_in, common.NUM_CLASSES)

  def forward(self, x):
    x = self.blocks(F.relu(self.stem(x)))
    return self.head(x.mean(dim=(2, 3)))


_BUILDERS = {"mlp": _mlp, "cnn": _cnn, "resnet20": ResNet20}


def _setup(seed: int, device: str = "cpu") -> None:
  if device == "cpu":
    torch.set_num_threads(NUM_THREADS)
    torch.set_flush_denormal(True)
  else:
    torch.set_float32_matmul_precision("high")
  torch.manual_seed(seed)


def _sync(device: str) -> None:
  if device != "cpu":
    torch.cuda.synchronize()


def run_torch(model: str, n: int, epochs: int, seed: int, compile: bool = False,  # pylint: disable=redefined-builtin
              batch_size: int = common.BATCH_SIZE, device: str = "cpu",
              graphs: bool = False) -> dict[str, Any]:
  """The usual PyTorch loop over index batches of a per-epoch permutation.

  Args:
    model: a key of ``common.INPUT_SHAPES``.
    n: training examples per epoch.
    epochs: epochs to run; the first includes ``torch.compile``'s compilation.
    seed: seeds the data, the initialisation and the shuffles.
    compile: wrap the model in ``torch.compile`` (default inductor backend).
    batch_size: examples per step.
    device: ``'cpu'`` or ``'cuda'``; on a GPU the whole data set lives there.
    graphs: PyTorch's fastest setup for small steps on a GPU that leaves the loop as
      written: ``torch.compile(mode='reduce-overhead')`` (the forward and backward
      replayed as CUDA graphs) and the fused Adam kernel. Implies ``compile``.
  """
  _setup(seed, device)
  x, y = common.make_data(model, n, seed)
  x = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))  # NHWC -> NCHW.
  y = torch.from_numpy(y).long()
  x, y = x.to(device), y.to(device)
  module = _BUILDERS[model]().to(device)
  if graphs:
    net = torch.compile(module, mode="reduce-overhead")
  else:
    net = torch.compile(module) if compile else module
  fused = {"fused": True} if graphs and device != "cpu" else {}
  optimizer = torch.optim.Adam(module.parameters(), lr=common.LEARNING_RATE, eps=1e-8,
                               **fused)
  generator = torch.Generator().manual_seed(seed + 1)
  bs, steps = batch_size, n // batch_size
  module.train()
  seconds = []
  for _ in range(epochs):
    _sync(device)
    t0 = time.perf_counter()
    perm = torch.randperm(n, generator=generator).to(device)
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), dtype=torch.long, device=device)
    for i in range(steps):
      idx = perm[i * bs:(i + 1) * bs]
      xb, yb = x[idx], y[idx]
      if graphs:  # A new step: the graphs' outputs of the last one may be overwritten.
        torch.compiler.cudagraph_mark_step_begin()
      logits = net(xb)
      loss = F.cross_entropy(logits, yb)
      optimizer.zero_grad(set_to_none=True)
      loss.backward()
      optimizer.step()
      with torch.no_grad():
        loss_sum += loss.detach()
        correct += (logits.argmax(1) == yb).sum()
    float(loss_sum), int(correct)  # pylint: disable=expression-not-assigned  # Syncs.
    seconds.append(time.perf_counter() - t0)
  rates = [steps * bs / s for s in seconds]
  return {"samples_per_s": common.steady_rate(rates), "epoch_rates": rates,
          "compile_s": None, "first_epoch_s": seconds[0],
          "params": int(sum(p.numel() for p in module.parameters())),
          "torch_threads": torch.get_num_threads(), "versions": {"torch": torch.__version__}}


def run_matmul(size: int = 2048, repeats: int = 10, device: str = "cpu",
               **unused) -> dict[str, Any]:
  """GFLOP/s of a ``[size, size] @ [size, size]`` float32 matmul (median)."""
  del unused
  _setup(0, device)
  a = torch.randn(size, size, device=device)
  b = torch.randn(size, size, device=device)
  torch.matmul(a, b)
  _sync(device)
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    torch.matmul(a, b)
    _sync(device)
    times.append(time.perf_counter() - t0)
  flop = 2.0 * size**3
  return {"gflops": flop / float(np.median(times)) / 1e9,
          "gflops_best": flop / min(times) / 1e9, "torch_threads": torch.get_num_threads(),
          "versions": {"torch": torch.__version__}}
