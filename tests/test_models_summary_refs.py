"""InceptionBlock / InceptionNet, Conv1DText and the parameter table against
independent references: parameter counts worked out by hand from the architecture,
forward passes recomputed with jax.lax / numpy from the modules' own parameters."""

from __future__ import annotations

import chex
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
import pytest

import jdl
from jdl import models
from jdl.errors import JdlError
from conftest import random_variables

KEY = jax.random.key(0)
HI = lax.Precision.HIGHEST


def _random_variables(model, x, seed):
  """Random variables of ``model`` for input ``x``: biases and BN shifts off zero, BN
  scales and variances positive, so no term of the forward pass vanishes. numpy
  arrays: the numpy references compute in float64 from them."""
  return jax.tree.map(np.asarray, random_variables(model, x, seed=seed,
                                                    positive=("var", "scale")))


def _shapes(tree):
  return jax.tree.map(lambda a: tuple(a.shape), tree)


# ----------------------------------------------------------- lax references


def _conv(x, p):
  """'SAME' stride-1 convolution (odd windows) plus the bias when the layer has one."""
  nd = x.ndim - 2
  spec = {1: ("NWC", "WIO", "NWC"), 2: ("NHWC", "HWIO", "NHWC")}[nd]
  y = lax.conv_general_dilated(x, p["kernel"], (1,) * nd, "SAME", dimension_numbers=spec,
                               precision=HI)
  return y + p["bias"] if "bias" in p else y


def _max_pool(x, size, stride):
  """'SAME' max pool: the padding is -inf, so it never wins."""
  nd = x.ndim - 2
  return lax.reduce_window(x, -jnp.inf, lax.max, (1,) + (size,) * nd + (1,),
                           (1,) + (stride,) * nd + (1,), "SAME")


def _bn(y, p, s):
  return (y - s["mean"]) / jnp.sqrt(s["var"] + 1e-5) * p["scale"] + p["bias"]


def _unit(x, params, stats, name, act, bn):
  """conv -> [BN] -> act (``bn='before'``) or conv -> act -> BN (``'after'``)."""
  y = _conv(x, params[name])
  if bn is None:
    return act(y)
  norm = lambda v: _bn(v, params[f"{name}_bn"], stats[f"{name}_bn"])  # noqa: E731
  return act(norm(y)) if bn == "before" else norm(act(y))


def _block_ref(x, params, stats, act=jax.nn.relu, bn=None):
  """Szegedy et al. 2015, fig. 2b: 1x1 | 1x1->3x3 | 1x1->5x5 | 3x3 max pool->1x1."""
  u = lambda y, name: _unit(y, params, stats, name, act, bn)  # noqa: E731
  return jnp.concatenate([u(x, "b1"), u(u(x, "b3_reduce"), "b3"), u(u(x, "b5_reduce"), "b5"),
                          u(_max_pool(x, 3, 1), "pool_proj")], axis=-1)


def _block_shapes(c_in, widths, ndim):
  """The block's parameter shapes, written out from the paper's figure."""
  c1, c3r, c3, c5r, c5, pp = widths
  convs = {"b1": (1, c_in, c1), "b3_reduce": (1, c_in, c3r), "b3": (3, c3r, c3),
           "b5_reduce": (1, c_in, c5r), "b5": (5, c5r, c5), "pool_proj": (1, c_in, pp)}
  return {name: {"kernel": (*(k,) * ndim, i, o), "bias": (o,)}
          for name, (k, i, o) in convs.items()}


# ------------------------------------------------------------- InceptionBlock

WIDTHS = (2, 3, 4, 1, 2, 5)  # c1, c3_reduce, c3, c5_reduce, c5, pool_proj: all distinct.


def test_inception_block_parameter_shapes_follow_the_branch_widths():
  """kernel (*window, in, out) and a bias per conv, the window's rank that of the input."""
  for shape in [(1, 5, 5, 3), (1, 5, 3)]:
    variables = jax.eval_shape(models.InceptionBlock(*WIDTHS).init, KEY, jnp.zeros(shape))
    chex.assert_trees_all_equal(_shapes(variables["params"]),
                                _block_shapes(shape[-1], WIDTHS, len(shape) - 2))


def test_inception_block_equals_its_four_branches_computed_with_lax():
  """Output = concat(1x1, 1x1->3x3, 1x1->5x5, maxpool3->1x1) on the channel axis, in
  that order, the spatial shape kept (here on [batch, length, channels])."""
  block = models.InceptionBlock(*WIDTHS)
  x = jax.random.normal(jax.random.key(1), (2, 9, 3))
  variables = _random_variables(block, x, 2)
  y = jax.jit(block.apply)(variables, x)
  chex.assert_shape(y, (2, 9, 2 + 4 + 2 + 5))
  want = jax.jit(lambda v, x: _block_ref(x, v["params"], {}))(variables, x)
  np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-4)


def test_inception_block_parameter_count_by_hand():
  """Conv biases go exactly when a BN follows the conv directly."""
  x = jnp.zeros((1, 5, 5, 3))
  count = lambda **kw: jdl.count_params(  # noqa: E731
      jax.eval_shape(models.InceptionBlock(*WIDTHS, **kw).init, KEY, x)["params"])
  # c_in=3, widths (2, 3, 4, 1, 2, 5); kernels k*k*in*out:
  #   b1 1*3*2=6, b3_reduce 1*3*3=9, b3 9*3*4=108, b5_reduce 1*3*1=3, b5 25*1*2=50,
  #   pool_proj 1*3*5=15 -> 191 kernel weights; biases 2+3+4+1+2+5 = 17.
  assert count() == 191 + 17 == 208
  assert count(batch_norm=True) == 191 + 2 * 17  # BN scale+shift, no conv bias.
  assert count(batch_norm=True, bn_position="after") == 191 + 17 + 2 * 17


# --------------------------------------------------------------- InceptionNet

STAGES = (((2, 3, 4, 1, 2, 3),), ((3, 2, 5, 2, 3, 2),))  # Outputs 11 then 13 channels.


def _net_ref(variables, x, *, act, bn):
  """stem 3x3 -> stage0 -> maxpool 3/2 SAME -> stage1 -> global mean -> dense."""
  p, s = variables["params"], variables.get("batch_stats", {})
  h = _unit(x, p, s, "stem", act, bn)
  h = _block_ref(h, p["stage0_block0"], s.get("stage0_block0"), act, bn)
  h = _max_pool(h, 3, 2)
  h = _block_ref(h, p["stage1_block0"], s.get("stage1_block0"), act, bn)
  h = h.mean(axis=tuple(range(1, h.ndim - 1)))
  return jnp.dot(h, p["head"]["kernel"], precision=HI) + p["head"]["bias"]


def test_inception_net_eval_forward_matches_a_lax_reference():
  """Stem, blocks, the 3x3 stride-2 max pool between stages, global average and head;
  activation and BN placement reach every block; no dropout out of training."""
  net = models.InceptionNet(3, stem_features=4, stages=STAGES, activation="tanh",
                            batch_norm=True, bn_position="after", dropout_rate=0.5)
  x = jax.random.normal(jax.random.key(3), (2, 9, 7, 2))  # Odd sizes: SAME pads one side.
  variables = _random_variables(net, x, 4)
  got = jax.jit(lambda v, x: net.apply(v, x, train=False))(variables, x)
  want = jax.jit(lambda v, x: _net_ref(v, x, act=jnp.tanh, bn="after"))(variables, x)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_inception_net_parameter_and_statistics_counts_by_hand():
  x = jnp.zeros((1, 8, 8, 2))
  init = lambda **kw: jax.eval_shape(  # noqa: E731
      models.InceptionNet(3, stem_features=4, stages=STAGES, **kw).init, KEY, x)
  # stem: 3*3*2*4 = 72 weights, 4 biases.
  # stage0 (in 4; 2,3,4,1,2,3): 1*4*2 + 1*4*3 + 9*3*4 + 1*4*1 + 25*1*2 + 1*4*3
  #   = 8+12+108+4+50+12 = 194 weights; 2+3+4+1+2+3 = 15 biases; out 2+4+2+3 = 11.
  # stage1 (in 11; 3,2,5,2,3,2): 1*11*3 + 1*11*2 + 9*2*5 + 1*11*2 + 25*2*3 + 1*11*2
  #   = 33+22+90+22+150+22 = 339 weights; 3+2+5+2+3+2 = 17 biases; out 3+5+3+2 = 13.
  # head: 13*3 + 3 = 42.
  weights, biases, head = 72 + 194 + 339, 4 + 15 + 17, 42
  assert jdl.count_params(init()["params"]) == weights + biases + head == 683
  before = init(batch_norm=True)
  assert jdl.count_params(before["params"]) == weights + 2 * biases + head
  assert jdl.count_params(before["batch_stats"]) == 2 * biases  # mean, var per channel.
  after = init(batch_norm=True, bn_position="after")
  assert jdl.count_params(after["params"]) == weights + 3 * biases + head


def test_inception_net_kernel_init_reaches_every_conv():
  net = models.InceptionNet(3, stem_features=2, stages=STAGES[:1], kernel_init="zeros")
  params = jax.jit(net.init)(KEY, jnp.ones((1, 4, 4, 1)))["params"]
  kernels = {path: leaf for path, leaf in jax.tree_util.tree_leaves_with_path(params)
             if path[-1].key == "kernel"}
  assert len(kernels) == 1 + 6 + 1  # stem, the block's six convs, head.
  for path, k in kernels.items():
    assert not np.any(k), jax.tree_util.keystr(path)


# ----------------------------------------------------------------- Conv1DText

TEXT = dict(vocab_size=11, embed_dim=3, filters=(4, 3), kernel_size=3, pool_size=3,
            dense=(5,))


def _text_ref(p, tokens, pool_size):
  """numpy float64, one unpadded sequence: embed -> [VALID conv, relu, max pool of
  size=stride, floor] ... -> VALID conv, relu -> mean over time -> ReLU MLP."""
  h = np.asarray(p["embed"]["embedding"], np.float64)[tokens]
  convs = sorted(k for k in p if k.startswith("conv_"))
  for i, name in enumerate(convs):
    k, b = np.asarray(p[name]["kernel"], np.float64), np.asarray(p[name]["bias"], np.float64)
    size = k.shape[0]
    h = np.stack([sum(h[t + j] @ k[j] for j in range(size)) + b
                  for t in range(len(h) - size + 1)])
    h = np.maximum(h, 0)
    if i < len(convs) - 1:
      n = len(h) // pool_size
      h = h[:n * pool_size].reshape(n, pool_size, -1).max(axis=1)
  h = h.mean(axis=0)
  mlp = p["mlp"]
  for i in range(sum(k.startswith("hidden_") for k in mlp)):
    h = np.maximum(h @ mlp[f"hidden_{i}"]["kernel"] + mlp[f"hidden_{i}"]["bias"], 0)
  return h @ mlp["head"]["kernel"] + mlp["head"]["bias"]


def test_conv1d_text_matches_a_numpy_reference_whatever_the_padding():
  """Each row, padded 'post' or 'pre' with pad_id, gives the logits of its unpadded
  tokens through the Keras-style stack (lengths from the receptive field up)."""
  model = models.Conv1DText(num_outputs=2, dropout_rate=0.3, **TEXT)
  assert model.min_length() == 3 * 3 + 3 - 1 == 11
  rng = np.random.default_rng(7)
  lengths, width = [11, 12, 14, 17, 20], 24
  seqs = [rng.integers(1, 11, n) for n in lengths]  # Real tokens are never pad_id (0).
  post = np.stack([np.pad(s, (0, width - len(s))) for s in seqs]).astype(np.int32)
  pre = np.stack([np.pad(s, (width - len(s), 0)) for s in seqs]).astype(np.int32)
  params = _random_variables(model, post, 8)["params"]
  want = np.stack([_text_ref(params, s, 3) for s in seqs])
  apply = jax.jit(lambda x: model.apply({"params": params}, x, train=False))
  np.testing.assert_allclose(apply(post), want, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(apply(pre), want, rtol=1e-4, atol=1e-4)


def test_conv1d_text_parameter_count_by_hand():
  model = models.Conv1DText(num_outputs=2, **TEXT)
  shapes = jax.eval_shape(model.init, KEY, jnp.ones((1, 12), jnp.int32))["params"]
  # embed 11*3 = 33; conv_0 3*3*4+4 = 40; conv_1 3*4*3+3 = 39; hidden 3*5+5 = 20;
  # head 5*2+2 = 12.
  assert jdl.count_params(shapes) == 33 + 40 + 39 + 20 + 12 == 144


@pytest.mark.parametrize("filters, kernel_size, pool_size, want", [
    ((8,), 4, 3, 4),                 # One conv: its window.
    ((8, 8), 5, 5, 5 * 5 + 5 - 1),   # The course's Keras model: 29 tokens.
    ((2, 2, 2), 3, 2, (3 * 2 + 2) * 2 + 2),  # 18: walked back through two pools.
])
def test_conv1d_text_min_length_is_the_receptive_field(filters, kernel_size, pool_size, want):
  """Sequences of min_length run; one token shorter is refused."""
  model = models.Conv1DText(7, 2, embed_dim=2, filters=filters, kernel_size=kernel_size,
                            pool_size=pool_size)
  assert model.min_length() == want
  shapes = jax.eval_shape(model.init, KEY, jnp.ones((1, want), jnp.int32))
  out = jax.eval_shape(model.apply, shapes, jax.ShapeDtypeStruct((1, want), jnp.int32))
  chex.assert_shape(out, (1, 2))
  with pytest.raises(JdlError, match="receptive field"):
    jax.eval_shape(model.apply, shapes, jax.ShapeDtypeStruct((1, want - 1), jnp.int32))


def test_conv1d_text_training_dropout_reaches_the_head_hidden_layer():
  """dropout_rate also drops the MLP head's hidden units in training: each is 0 or
  its activation / (1 - rate). The head is made the identity to read them."""
  model = models.Conv1DText(num_outputs=5, dropout_rate=0.5, **TEXT)
  x = jnp.asarray(np.random.default_rng(9).integers(1, 11, (8, 14)), jnp.int32)
  params = _random_variables(model, x, 10)["params"]
  params["mlp"]["head"] = {"kernel": np.eye(5, dtype=np.float32),
                           "bias": np.zeros(5, np.float32)}
  out, state = jax.jit(lambda p, x: model.apply(
      {"params": p}, x, train=True, mutable=["intermediates"],
      rngs={"dropout": jax.random.key(11)}))(params, x)
  act = np.asarray(state["intermediates"]["mlp"]["act_0"][0])
  out = np.asarray(out)
  live = act > 1e-3
  dropped = np.isclose(out, 0, atol=1e-6)
  kept = np.isclose(out, 2 * act, rtol=1e-5, atol=1e-6)
  assert np.all(dropped | kept)
  assert dropped[live].any() and kept[live].any()


def test_conv1d_text_kernel_init_reaches_the_convs_and_hidden_layers():
  model = models.Conv1DText(num_outputs=2, kernel_init="zeros", **TEXT)
  params = jax.jit(model.init)(KEY, jnp.ones((1, 12), jnp.int32))["params"]
  for layer in (params["conv_0"], params["conv_1"], params["mlp"]["hidden_0"]):
    assert not np.any(layer["kernel"])


# ------------------------------------------------------------- param_table


def test_param_table_of_a_small_inception_block_by_hand():
  """Every conv and BN row with its shapes and count, statistics non-trainable, and the
  totals; abstract variables (as after jax.jit: names sorted) are read as real ones."""
  block = models.InceptionBlock(1, 1, 2, 1, 1, 1, batch_norm=True)
  variables = jax.eval_shape(block.init, KEY, jnp.zeros((1, 4, 4, 2)))
  # Columns as wide as their widest cell, two spaces apart, counts right-aligned.
  assert jdl.param_table(variables) == "\n".join([
      "layer         collection   shapes                 count",
      "b1_bn         batch_stats  mean (1,), var (1,)        2",
      "b3_bn         batch_stats  mean (2,), var (2,)        4",
      "b3_reduce_bn  batch_stats  mean (1,), var (1,)        2",
      "b5_bn         batch_stats  mean (1,), var (1,)        2",
      "b5_reduce_bn  batch_stats  mean (1,), var (1,)        2",
      "pool_proj_bn  batch_stats  mean (1,), var (1,)        2",
      "b1            params       kernel (1, 1, 2, 1)        2",
      "b1_bn         params       scale (1,), bias (1,)      2",
      "b3            params       kernel (3, 3, 1, 2)       18",
      "b3_bn         params       scale (2,), bias (2,)      4",
      "b3_reduce     params       kernel (1, 1, 2, 1)        2",
      "b3_reduce_bn  params       scale (1,), bias (1,)      2",
      "b5            params       kernel (5, 5, 1, 1)       25",
      "b5_bn         params       scale (1,), bias (1,)      2",
      "b5_reduce     params       kernel (1, 1, 2, 1)        2",
      "b5_reduce_bn  params       scale (1,), bias (1,)      2",
      "pool_proj     params       kernel (1, 1, 2, 1)        2",
      "pool_proj_bn  params       scale (1,), bias (1,)      2",
      # No conv bias (a BN follows each conv). Kernels 2+18+2+25+2+2 = 51; BN scale and
      # shift 2*(1+2+1+1+1+1) = 14; running mean and var 14.
      "Total: 65 trainable, 14 non-trainable",
  ])


def test_param_table_lists_root_parameters_and_every_leaf_of_a_layer():
  """Parameters at the root form '(root)' rows and are frozen by their bare name, as
  optimizer.freeze matches them; a layer's leaves come kernel, scale, bias, then any
  other name; none is left out."""
  z = np.zeros
  variables = {"params": {  # As a module's self.param("w"), ("b") and submodules make it.
      "w": z((2, 3)), "b": z(3), "embed": {"embedding": z((4, 3))},
      "dense": {"bias": z(3), "kernel": z((3, 3))}, "norm": {"bias": z(3), "scale": z(3)},
      "gain": z(3)}}
  table = jdl.param_table(variables, frozen=("w",))
  assert table == "\n".join([
      "layer   collection       shapes                    count",
      "(root)  params (frozen)  w (2, 3)                      6",
      "(root)  params           b (3,), gain (3,)             6",
      "embed   params           embedding (4, 3)             12",
      "dense   params           kernel (3, 3), bias (3,)     12",
      "norm    params           scale (3,), bias (3,)         6",
      "Total: 36 trainable, 6 frozen, 0 non-trainable",
  ])
  # A layer with a third leaf: every leaf listed, kernel and bias first.
  tree = {"params": {"d": {"extra": z(2), "bias": z(3), "kernel": z((2, 3))}}}
  assert jdl.param_table(tree) == "\n".join([
      "layer  collection  shapes                                count",
      "d      params      kernel (2, 3), bias (3,), extra (2,)     11",
      "Total: 11 trainable, 0 non-trainable",
  ])
