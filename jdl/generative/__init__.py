"""Generative models: their objectives, sample-quality metrics and figures.

* :mod:`jdl.generative.objectives`: pure, jit-able per-example losses: the VAE's
  :func:`bernoulli_nll`, :func:`gaussian_kl` and :func:`reparameterize`; the GAN's
  :func:`gan_discriminator_loss` and non-saturating :func:`gan_generator_loss`;
  WGAN-GP's :func:`wgan_critic_loss`, :func:`wgan_generator_loss` and
  :func:`gradient_penalty`.
* :mod:`jdl.generative.evaluation`: :func:`inception_score` and
  :func:`frechet_distance` (host-side numpy on classifier outputs / features).
* :mod:`jdl.generative.tasks`: the tasks on jdl's loop (``config.task`` =
  ``autoencoder``, ``vae``, ``gan``, ``wgan_gp``), built from a config.
* :mod:`jdl.generative.gan`: the two-player :class:`GANState` and step.
* :mod:`jdl.generative.judge`: a trained jdl classifier as the scorer of generated
  images (IS and Frechet distance in its feature space).
* :mod:`jdl.generative.images`: :func:`image_grid` and PNG figures: sample grids,
  reconstructions, interpolations, latent scatter plots, ROC curves, loss curves.
"""

from jdl.generative.evaluation import frechet_distance
from jdl.generative.evaluation import frechet_distance_from_stats
from jdl.generative.evaluation import inception_score
from jdl.generative.images import image_grid
from jdl.generative.images import save_curves
from jdl.generative.images import save_image_grid
from jdl.generative.images import save_interpolation
from jdl.generative.images import save_latent_scatter
from jdl.generative.images import save_reconstructions
from jdl.generative.images import save_roc_curve
from jdl.generative.objectives import bernoulli_nll
from jdl.generative.objectives import gan_discriminator_loss
from jdl.generative.objectives import gan_generator_loss
from jdl.generative.objectives import gaussian_kl
from jdl.generative.objectives import gradient_penalty
from jdl.generative.objectives import reparameterize
from jdl.generative.objectives import wgan_critic_loss
from jdl.generative.objectives import wgan_generator_loss
from jdl.generative.judge import Judge
from jdl.generative.gan import GANState
from jdl.generative.gan import GANTask
from jdl.generative.tasks import TASKS
from jdl.generative.gan import create_gan_state

__all__ = ["bernoulli_nll", "gaussian_kl", "reparameterize", "gan_discriminator_loss",
    "gan_generator_loss", "wgan_critic_loss", "wgan_generator_loss",
    "gradient_penalty", "inception_score", "frechet_distance",
    "frechet_distance_from_stats", "image_grid", "save_image_grid",
    "save_reconstructions", "save_interpolation", "save_latent_scatter",
    "save_roc_curve", "save_curves", "Judge", "GANState", "GANTask", "TASKS",
    "create_gan_state"]
