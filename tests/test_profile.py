"""jdl profile: XLA:CPU's time per operation of a training block, by layer and pass."""

from __future__ import annotations

import json
import re
import tempfile

import jax
import pytest

from jdl import cli
from jdl.errors import JdlError
from jdl.train import loop
from jdl.train import profile

from conftest import make_config

PREFIX = "jit(run_block)/while/body/closed_call/"
CPU_ONLY = pytest.mark.skipif(jax.default_backend() != "cpu", reason="reads XLA:CPU's events")


@pytest.mark.parametrize("op_name,layer", [
    (PREFIX + "transpose(jvp(CNN))/conv_1/dot_general", "conv_1 (backward)"),
    (PREFIX + "jvp(CNN)/mlp/hidden_0/dot_general", "mlp (forward)"),
    (PREFIX + "jvp(CNN)/reduce_sum", "CNN (forward)"),
    (PREFIX + "jvp()/exp", "loss (forward)"),
    (PREFIX + "transpose(jvp(jit(take_along_axis)))/scatter-add", "loss (backward)"),
    (PREFIX + "add", "update and metrics"),
    # Dropout's random bits, inside calls of their own: still the layer's.
    ("jit(run_checked_block)/while/body/jvp(CNN)/Dropout_0/jit(_bernoulli)/jit(_uniform)/"
     "while/body/closed_call/add", "Dropout_0 (forward)"),
    (PREFIX + "jvp(CNN)/mlp/Dropout_0/jit(_bernoulli)/jit(_uniform)/while/body/closed_call/"
     "shift_right_logical", "mlp (forward)"),
    ("", "(no op_name: made by XLA)"),
])
def test_layer_of_reads_the_pass_and_the_module(op_name, layer):
  assert profile.layer_of(op_name) == layer


GAN = frozenset({"MLPGenerator", "MLPDiscriminator"})


@pytest.mark.parametrize("op_name,models,layer", [
    # A loop inside the model (a decoder's scan) and flax's method scopes are structure:
    # these were 'while (forward)' and 'Seq2Seq.encode (backward)'.
    ("jit(run_block)/while/body/jvp(Seq2Seq)/while/body/closed_call/decoder.body/decoder/"
     "attend/tanh", {"Seq2Seq"}, "decoder (forward)"),
    ("jit(run_block)/while/body/transpose(jvp(Seq2Seq))/Seq2Seq.encode/encoder/backward/"
     "while/body/dot_general", {"Seq2Seq"}, "encoder (backward)"),
    ("jit(run_block)/while/body/jvp(Seq2Seq)/while/body/jit(dynamic_update_index_in_dim)/"
     "dynamic_update_slice", {"Seq2Seq"}, "Seq2Seq (forward)"),
    # Two models: each layer named with its model (their hidden_0 were summed), and
    # the generator making the discriminator's fakes was 'update and metrics'.
    ("jit(run_block)/while/body/jvp(MLPDiscriminator)/hidden_0/dot_general", GAN,
     "MLPDiscriminator/hidden_0 (forward)"),
    ("jit(run_block)/while/body/cond/branch_1_fun/transpose(jvp(MLPGenerator))/output/"
     "dot_general", GAN, "MLPGenerator/output (backward)"),
    ("jit(run_block)/while/body/MLPGenerator/output/dot_general", GAN,
     "MLPGenerator/output (forward, no gradient)"),
    ("jit(run_block)/while/body/cond/branch_1_fun/add", GAN, "update and metrics"),
    # Modules named like the structure: 'body' and 'cond' are layers outside a loop
    # or a branch.
    ("jit(run_block)/while/body/jvp(Net)/body/layers_0/dot_general", {"Net"},
     "body (forward)"),
    ("jit(run_block)/while/body/transpose(jvp(Net))/cond/Dense_0/dot_general", {"Net"},
     "cond (backward)"),
    ("jit(run_block)/while/body/jvp(Net)/while/cond/lt", {"Net"}, "Net (forward)"),
])
def test_layer_of_skips_loops_and_method_scopes_and_names_each_model(op_name, models, layer):
  assert profile.model_names([op_name, "x/jvp(MLPGenerator)/y"]) >= (
      {"MLPGenerator"} | set(re.findall(r"jvp\((\w+)\)", op_name)))
  assert profile.layer_of(op_name, models) == layer


@CPU_ONLY
@pytest.mark.parametrize("check, parallel", [("step", "none"), ("block", "none"),
                                             ("step", "shard_map")])
def test_profile_of_an_mlp_block_names_its_matmuls_by_layer_and_pass(check, parallel):
  # shard_map: the per-device block, jitted outside shard_map, failed on its axis name.
  trainer = loop.Trainer(make_config(model__hidden=(48, 40), batch_size=16,
                                     nonfinite_check=check, parallel=parallel), quiet=True)
  result = profile.profile_block(trainer, 3)
  rows = result["ops"]
  assert result["steps"] == 3 and result["nonfinite_check"] == check
  assert result["ops_ms_per_step"] > 0 and result["wall_ms_per_step"] > 0
  assert rows == sorted(rows, key=lambda r: -r["ms_per_step"])
  assert all(r["opcode"] and r["shape"] for r in rows)
  layers = {r["layer"] for r in rows}
  for layer in ("hidden_0", "hidden_1", "head"):
    assert f"{layer} (forward)" in layers and f"{layer} (backward)" in layers
  # The first hidden layer's forward matmul, [16, 64] @ [64, 48], is one of them.
  assert any("f32[16,48]" in r["shape"] for r in rows if r["layer"] == "hidden_0 (forward)")
  report = profile.format_report(result, top=4)
  assert f"NaN/Inf checked per {check}" in report and "layer (pass)" in report


@CPU_ONLY
def test_profile_in_step_mode_times_one_step_blocks():
  trainer = loop.Trainer(make_config(model__hidden=(16,), batch_size=16, epoch_mode="step"),
                         quiet=True)
  result = profile.profile_block(trainer, 4)
  assert result["steps"] == 1 and trainer.epoch_mode == "step"
  assert {"hidden_0 (forward)", "hidden_0 (backward)"} <= {r["layer"] for r in result["ops"]}
  # Each operation runs about once per step (the first call's compile aside).
  dense = [r for r in result["ops"] if r["layer"] == "hidden_0 (forward)"]
  assert all(r["runs_per_step"] == pytest.approx(1.0) for r in dense)


def test_a_fusion_without_an_op_name_takes_its_fused_operations_one():
  # Mixed precision's convert fusions carry no op_name: half a CNN's step was booked
  # as "(no op_name: made by XLA)" though every operation fused in them names one.
  text = """HloModule m

%fused_computation.3 (param_0: f32[4]) -> bf16[4] {
  %param_0 = f32[4]{0} parameter(0)
  %divide.1 = f32[4]{0} divide(%param_0, %param_0), metadata={op_name="jit(b)/transpose(jvp(CNN))/conv_1/div"}
  ROOT %convert.2 = bf16[4]{0} convert(%divide.1)
}

ENTRY %main (p: f32[4]) -> bf16[4] {
  %p = f32[4]{0} parameter(0)
  ROOT %divide_convert_fusion = bf16[4]{0} fusion(%p), kind=kLoop, calls=%fused_computation.3
}
"""
  ops = profile.hlo_ops(text)
  assert ops["divide_convert_fusion"] == ("bf16[4]{0}", "fusion",
                                          "jit(b)/transpose(jvp(CNN))/conv_1/div")
  assert ops["convert.2"][2] == ""  # Not a fusion: as XLA wrote it.
  assert profile.layer_of(ops["divide_convert_fusion"][2]) == "conv_1 (backward)"
  # A weight's cast to bfloat16, no op_name inside either: the layer that uses it.
  text = """HloModule m

%wrapped_convert_computation.4 (param_0.315: f32[64,10]) -> bf16[64,10] {
  %param_0.315 = f32[64,10]{1,0} parameter(0)
  ROOT %convert.2942 = bf16[64,10]{1,0} convert(%param_0.315)
}

ENTRY %main (p: f32[64,10], x: bf16[2,64]) -> bf16[2,10] {
  %p = f32[64,10]{1,0} parameter(0)
  %x = bf16[2,64]{1,0} parameter(1)
  %wrapped_convert.4 = bf16[64,10]{1,0} fusion(%p), kind=kLoop, calls=%wrapped_convert_computation.4
  ROOT %dot.7 = bf16[2,10]{1,0} dot(bf16[2,64]{1,0} %x, bf16[64,10]{1,0} %wrapped_convert.4), lhs_contracting_dims={1}, rhs_contracting_dims={0}, metadata={op_name="jit(b)/jvp(CNN)/head/dot_general"}
}
"""
  ops = profile.hlo_ops(text)
  assert profile.layer_of(ops["wrapped_convert.4"][2]) == "head (forward)"


def test_the_source_column_keeps_the_path_of_a_call_inside_a_layer():
  # Cut at the first closed_call, dropout's random bits read "add".
  name = "jit(b)/while/body/jvp(MLP)/Dropout_0/jit(_bernoulli)/jit(_uniform)/closed_call/add"
  assert profile.source_of(name) == name
  assert profile.source_of("jit(b)/closed_call/jvp(MLP)/head/dot") == "jvp(MLP)/head/dot"
  row = {"op": "add.1", "shape": "f32[2]", "op_name": name, "layer": "Dropout_0 (forward)",
         "ms_per_step": 1.0}
  report = profile.format_report({"wall_ms_per_step": 1.0, "steps": 1, "ops": [row],
                                  "nonfinite_check": "step", "ops_ms_per_step": 1.0})
  assert "jit(_uniform)/closed_call/add" in report


@CPU_ONLY
@pytest.mark.parametrize("mode", ["scan", "step"])
def test_a_gan_profile_holds_its_generator_updates(mode):
  # d_steps=3: every call re-ran step 0 in step mode (no generator update at all),
  # and --steps 2 of a block held none either.
  from test_generative_train import gan_config
  trainer = loop.Trainer(gan_config(generative__d_steps=3, epoch_mode=mode), quiet=True)
  result = profile.profile_block(trainer, 2)
  assert result["steps"] == (3 if mode == "scan" else 1)
  layers = {r["layer"] for r in result["ops"]}
  assert any(layer.startswith("MLPGenerator") and layer.endswith("(backward)")
             for layer in layers), layers


@CPU_ONLY
def test_a_running_trace_is_one_clear_error():
  trainer = loop.Trainer(make_config(model__hidden=(8,), batch_size=16), quiet=True)
  with tempfile.TemporaryDirectory() as d:
    jax.profiler.start_trace(d)
    try:
      with pytest.raises(JdlError, match="another jax.profiler trace is running"):
        profile.profile_block(trainer, 1)
    finally:
      jax.profiler.stop_trace()


@CPU_ONLY
def test_cli_profile_prints_the_table_and_writes_json(tmp_path, capsys):
  out = tmp_path / "ops.json"
  assert cli.main(["profile", "--config", "digits_mlp", "--steps", "2", "--top", "5",
                   "--out", str(out)]) == 0
  text = capsys.readouterr().out
  assert "layer (pass)" in text and "(backward)" in text
  data = json.loads(out.read_text())
  assert data["steps"] == 2 and data["ops"]
  assert len([l for l in text.splitlines() if "%  " in l]) >= 5


@pytest.mark.parametrize("args,words", [
    (["--steps", "0"], ["--steps"]),
    (["--out", f"{__file__}/ops.json"], ["test_profile.py is a file, not a folder"]),
    (["--out", "ops.txt"], ["--out must name a .json file"]),
    (["--config", "no_such_experiment"], ["no_such_experiment"]),
])
def test_cli_profile_bad_input_is_one_line_and_exit_2(args, words, capsys):
  try:
    code = cli.main(["profile", *args])
  except SystemExit as e:  # An argument argparse refuses.
    code = e.code
  assert code == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("jdl: error:")
  assert all(w in err[0] for w in words)
