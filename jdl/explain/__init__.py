"""Interpretability: which inputs does a trained model's prediction depend on?

* Gradient attributions (:mod:`jdl.explain.gradients`): :func:`saliency` (vanilla
  gradient, or gradient x input) and :func:`integrated_gradients` with its
  completeness check; jit-compiled, batched over examples and path points.
* :func:`lime` (:func:`lime_tabular`, :func:`lime_image` with grid superpixels):
  model-agnostic local surrogates, sampled with an explicit PRNG key.
* :func:`save_overlay`, :func:`save_overlay_grid`: attribution heat maps on images
  as PNG files.
* :func:`from_run`: a trained run's model and input normalisation;
  :func:`remove_top_k`: the deletion check.

Attributions are computed in the space the model sees (normalised inputs), and the
explained output is, by default, each example's predicted class. A model with one
output (a binary classifier's logit: the log-odds of class 1) has one output to
explain, whatever the prediction: the evidence for class 0 is the negated
attribution. LIME explains class probabilities (``RunModel.probabilities``: the
sigmoid pair ``[1 - p, p]`` of one logit).

Examples:
  >>> import jax, jax.numpy as jnp, flax.linen as nn
  >>> from jdl import explain
  >>> model = nn.Dense(3)
  >>> x = jnp.ones((2, 4))
  >>> variables = model.init(jax.random.key(0), x)
  >>> apply_fn = lambda v, x, train=False: model.apply(v, x)
  >>> explain.saliency(apply_fn, variables, x).shape
  (2, 4)
"""

from jdl.explain.deletion import remove_top_k
from jdl.explain.gradients import CompletenessWarning
from jdl.explain.gradients import IGResult
from jdl.explain.gradients import integrated_gradients
from jdl.explain.gradients import resolve_targets
from jdl.explain.gradients import saliency
from jdl.explain.lime import LimeExplanation
from jdl.explain.lime import grid_cells
from jdl.explain.lime import lime
from jdl.explain.lime import lime_image
from jdl.explain.lime import lime_tabular
from jdl.explain.lime import weighted_ridge
from jdl.explain.overlay import save_overlay
from jdl.explain.overlay import save_overlay_grid
from jdl.explain.run import RunModel
from jdl.explain.run import from_run

__all__ = ["saliency", "integrated_gradients", "IGResult", "CompletenessWarning",
    "resolve_targets", "lime", "lime_tabular", "lime_image", "LimeExplanation",
    "grid_cells", "weighted_ridge", "remove_top_k", "save_overlay",
    "save_overlay_grid", "RunModel", "from_run"]
