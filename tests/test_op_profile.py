"""benchmarks/op_profile.py: XLA:CPU's per-operation times, attributed to layers."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import op_profile  # noqa: E402  pylint: disable=g-import-not-at-top

PREFIX = "jit(run_block)/while/body/closed_call/"


@pytest.mark.parametrize("op_name,layer", [
    (PREFIX + "transpose(jvp(CNN))/conv_1/dot_general", "conv_1 (backward)"),
    (PREFIX + "jvp(CNN)/mlp/hidden_0/dot_general", "mlp (forward)"),
    (PREFIX + "jvp(CNN)/reduce_sum", "CNN (forward)"),
    (PREFIX + "jvp()/exp", "loss (forward)"),
    (PREFIX + "transpose(jvp(jit(take_along_axis)))/scatter-add", "loss (backward)"),
    (PREFIX + "add", "update and metrics"),
    ("", "(no op_name: made by XLA)"),
])
def test_layer_of_reads_the_pass_and_the_module(op_name, layer):
  assert op_profile.layer_of(op_name) == layer


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="reads XLA:CPU's events")
def test_profile_of_an_mlp_block_names_its_matmuls_by_layer_and_pass():
  args = argparse.Namespace(config=None, model="mlp", batch_size=16, steps=3)
  result = op_profile.profile_block(op_profile.build_trainer(args, {}), 3)
  rows = result["ops"]
  assert result["steps"] == 3 and result["ops_ms_per_step"] > 0
  assert rows == sorted(rows, key=lambda r: -r["ms_per_step"])
  assert {"dot", "fusion"} <= {r["opcode"] for r in rows}
  layers = {r["layer"] for r in rows}
  for layer in ("hidden_0", "hidden_1", "head"):
    assert f"{layer} (forward)" in layers and f"{layer} (backward)" in layers
  # The first layer's forward matmul [16, 784] @ [784, 512] is one of them.
  forward = [r for r in rows if r["layer"] == "hidden_0 (forward)"]
  assert any("f32[16,512]" in r["shape"] for r in forward)
