"""The train state: a pytree of the step, parameters, their EMA, optimizer state and
the run's PRNG key, and its initialisation."""

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from diffusion_jax.models.unet import PARAM_DTYPES, Cond, UNet

Array = jax.Array


@flax.struct.dataclass
class TrainState:
  step: Array
  params: Any
  ema_params: Any
  opt_state: Any
  # Raw key data (uint32) of the run's base PRNG key; per-step keys fold in the step.
  rng: Array


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
                       image_size: int, channels: int, extra_params: dict | None = None
                       ) -> TrainState:
  """The state at step 0; `extra_params` (a learned schedule's, by name) join the
  network's top-level entries, in float32, trained and EMA'd with them."""
  init_rng, run_rng = jax.random.split(rng)
  x, t, cond = dummy_inputs(model, 1, image_size, channels)
  params = model.init(init_rng, x, t, cond)["params"]
  # Stored in model.param_dtype (the EMA and optimizer state follow); the layers cast
  # them to their compute dtype.
  param_dtype = PARAM_DTYPES[model.config.param_dtype]
  params = {**jax.tree.map(lambda p: p.astype(param_dtype), params), **(extra_params or {})}
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    ema_params=jax.tree.map(jnp.copy, params),
                    opt_state=tx.init(params), rng=jax.random.key_data(run_rng))
