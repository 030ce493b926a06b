"""The pure train step: state, batch -> new state, metrics."""

from typing import Callable

import jax
import optax

from diffusion_jax.conditioning import conditions
from diffusion_jax.core import diffusion
from diffusion_jax.models.unet import UNet
from diffusion_jax.training.state import TrainState


def make_train_step(model: UNet, tx: optax.GradientTransformation, diff: diffusion.Diffusion,
                    ema_decay: float, dropout: dict, cond_cfg=None
                    ) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
  """Builds train_step(state, batch) -> (state, metrics).

  `dropout` maps each condition ("labels", "text", "image") to the probability that
  it is replaced by its null (classifier-free guidance); `cond_cfg` is the config's
  `cond` section (image conditions are made here, from the clean batch images).
  Randomness comes from fold_in(state.rng, step), split into named streams. With
  JAX's partitionable threefry the random numbers of each example do not depend on
  how the batch is sharded, so a run gives the same result on any number of devices.
  """
  mcfg = model.config
  cond_cfg = cond_cfg if cond_cfg is not None else conditions.NO_IMAGE

  def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
    key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    loss_key, dropout_key, drop_key, degrade_key = jax.random.split(key, 4)
    inputs = dict(batch)
    if cond_cfg.image:
      spec = conditions.IMAGE_CONDITIONS[cond_cfg.image]
      inputs.update(spec.degrade(batch["image"], degrade_key, cond_cfg))
    cond = conditions.make_cond(mcfg, cond_cfg, inputs, batch["image"].shape[1])
    cond = conditions.drop(cond, drop_key, dropout, mcfg.num_classes)

    def loss_fn(params):
      def apply(x_t, t):
        return model.apply({"params": params}, x_t, t, cond, train=True,
                           rngs={"dropout": dropout_key})
      return diffusion.denoising_loss(apply, diff, batch["image"], loss_key)

    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema = jax.tree.map(lambda e, p: ema_decay * e + (1.0 - ema_decay) * p,
                       state.ema_params, params)
    metrics = {"loss": loss, "grad_norm": optax.global_norm(grads)}
    new_state = state.replace(step=state.step + 1, params=params, ema_params=ema,
                              opt_state=opt_state)
    return new_state, metrics

  return train_step
