"""The autoencoder's train state and pure train step (kind "autoencoder").

The state is the diffusion runs' TrainState: `params` (and their EMA) hold
{"autoencoder": ..., "discriminator": ...} (no discriminator when the loss has no
adversarial term), and one optimizer updates both. Adam's moments are per parameter,
so that equals LDM's two optimizers with the same settings, except that gradient
clipping (optim.grad_clip) takes the global norm over both gradients.
"""

from typing import Callable, Optional

import jax
import jax.numpy as jnp
import optax

from diffusion_jax.models import autoencoder_losses as losses
from diffusion_jax.models.autoencoder import AutoencoderKL
from diffusion_jax.training.state import TrainState
from diffusion_jax.training.step import apply_gradients


def create_state(rng: jax.Array, model: AutoencoderKL, loss_cfg: losses.AutoencoderLossConfig,
                 tx: optax.GradientTransformation, image_size: int) -> TrainState:
  """A new state: freshly initialised autoencoder (and discriminator), step 0."""
  ae_rng, disc_rng, run_rng = jax.random.split(rng, 3)
  cfg = model.config
  x = jnp.zeros((1, image_size, image_size, cfg.in_channels), jnp.float32)
  params = {"autoencoder": model.init(ae_rng, x)["params"]}
  if loss_cfg.use_discriminator:
    params["discriminator"] = losses.init_discriminator(disc_rng, loss_cfg, x.shape)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    ema_params=jax.tree.map(jnp.copy, params), opt_state=tx.init(params),
                    rng=jax.random.key_data(run_rng))


def make_train_step(model: AutoencoderKL, loss_cfg: losses.AutoencoderLossConfig,
                    tx: optax.GradientTransformation, ema_decay: float,
                    lpips_weights: Optional[dict] = None
                    ) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
  """train_step(state, batch) -> (state, metrics): the autoencoder's loss
  (`autoencoder_losses.autoencoder_loss`: reconstruction, KL, and the adversarial term
  from loss_cfg.disc_start on) and the discriminator's loss on the same batch and its
  reconstructions, both gradients applied in one update (skipped if non-finite)."""

  def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
    key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    images, params = batch["image"], state.params
    (loss, aux), ae_grads = jax.value_and_grad(losses.autoencoder_loss, has_aux=True)(
        params["autoencoder"], params.get("discriminator"), images, key, state.step, model,
        loss_cfg, lpips_weights)
    grads, metrics = {"autoencoder": ae_grads}, dict(aux["metrics"])
    if loss_cfg.use_discriminator:
      (_, d_metrics), grads["discriminator"] = jax.value_and_grad(
          losses.discriminator_loss, has_aux=True)(
              params["discriminator"], images, aux["reconstruction"], state.step, loss_cfg)
      metrics.update(d_metrics)
    # PSNR of the reconstruction (images in [-1, 1]: peak-to-peak 2).
    mse = jnp.mean(jnp.square(aux["reconstruction"] - images))
    metrics["psnr"] = 10.0 * jnp.log10(4.0 / jnp.maximum(mse, 1e-10))
    return apply_gradients(state, loss, grads, tx, ema_decay, metrics)

  return train_step


__all__ = ["create_state", "make_train_step"]
