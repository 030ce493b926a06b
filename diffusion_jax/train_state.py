"""The train state (a pytree) and the pure update step."""

from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import optax

from diffusion_jax import conditions, diffusion
from diffusion_jax.models.unet import Cond, UNet

Array = jax.Array


@flax.struct.dataclass
class TrainState:
  step: Array
  params: Any
  ema_params: Any
  opt_state: Any
  # Raw key data (uint32) of the run's base PRNG key; per-step keys fold in the step.
  rng: Array


def learning_rate_schedule(optim_cfg, total_steps: int) -> optax.Schedule:
  """Linear warmup to `lr`, then constant or cosine decay to zero."""
  warmup = optax.linear_schedule(0.0, optim_cfg.lr, max(optim_cfg.warmup_steps, 1))
  decay_steps = max(total_steps - optim_cfg.warmup_steps, 1)
  after = {
      "constant": lambda: optax.constant_schedule(optim_cfg.lr),
      "cosine": lambda: optax.cosine_decay_schedule(optim_cfg.lr, decay_steps),
  }[optim_cfg.lr_schedule]()
  return optax.join_schedules([warmup, after], [optim_cfg.warmup_steps])


def make_optimizer(optim_cfg, total_steps: int) -> optax.GradientTransformation:
  lr = learning_rate_schedule(optim_cfg, total_steps)
  parts = []
  if optim_cfg.grad_clip:
    parts.append(optax.clip_by_global_norm(optim_cfg.grad_clip))
  parts.append(optax.adamw(lr, b1=optim_cfg.b1, b2=optim_cfg.b2, eps=optim_cfg.eps,
                           weight_decay=optim_cfg.weight_decay))
  return optax.chain(*parts)


def dummy_inputs(model: UNet, batch: int, image_size: int, channels: int):
  cfg = model.config
  x = jnp.zeros((batch, image_size, image_size, channels), jnp.float32)
  t = jnp.zeros((batch,), jnp.float32)
  length = cfg.text_max_len
  cond = Cond(
      labels=jnp.zeros((batch,), jnp.int32) if cfg.num_classes else None,
      image=(jnp.zeros((batch, image_size, image_size, cfg.cond_image_channels))
             if cfg.cond_image_channels else None),
      tokens=jnp.zeros((batch, length), jnp.int32) if cfg.text == "tokens" else None,
      text_emb=(jnp.zeros((batch, length, cfg.text_emb_dim))
                if cfg.text == "embeddings" else None),
      text_mask=jnp.zeros((batch, length), bool) if cfg.text == "embeddings" else None)
  return x, t, cond


def create_train_state(rng: Array, model: UNet, tx: optax.GradientTransformation,
                       image_size: int, channels: int) -> TrainState:
  init_rng, run_rng = jax.random.split(rng)
  x, t, cond = dummy_inputs(model, 1, image_size, channels)
  params = model.init(init_rng, x, t, cond)["params"]
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    ema_params=jax.tree.map(jnp.copy, params),
                    opt_state=tx.init(params), rng=jax.random.key_data(run_rng))


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
