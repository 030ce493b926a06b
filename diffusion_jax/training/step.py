"""The pure train step: state, batch -> new state, metrics."""

from typing import Callable

import jax
import jax.numpy as jnp
import optax

from diffusion_jax.conditioning import conditions
from diffusion_jax.core import diffusion, learned_schedule
from diffusion_jax.models.unet import UNet
from diffusion_jax.training import augment as augment_lib
from diffusion_jax.training import mesh as mesh_lib
from diffusion_jax.training.state import TrainState

# fold_in index of the key that draws latents from the encoder (latent diffusion).
ENCODE_STREAM = 1 << 20
# fold_in index of the key of the augmentation (training/augment.py).
AUGMENT_STREAM = ENCODE_STREAM + 1


def make_train_step(model: UNet, tx: optax.GradientTransformation, diff: diffusion.Diffusion,
                    ema_decay: float, dropout: dict, cond_cfg=None, microbatches: int = 1,
                    encode: Callable | None = None, sample_cached: Callable | None = None,
                    augment: augment_lib.AugmentConfig | None = None
                    ) -> Callable[..., tuple[TrainState, dict]]:
  """Builds train_step(state, batch) -> (state, metrics).

  With `encode(encoder_params, images, key) -> latents` (latent diffusion), the step
  is train_step(state, batch, encoder_params): the batch's images are encoded first
  (with a key of their own) and the network learns to denoise the latents; an image
  condition is made from the clean images and brought into latent space
  (conditions.make_cond; `encode` with key None gives the posterior mean). With
  `sample_cached(moments, key) -> latents` instead, batches come from a latent cache
  (their `moments` are the posteriors of their images) and the latents are drawn
  with the same key: the same latents as encoding, without the encoder.

  `dropout` maps each condition ("labels", "text", "image") to the probability that
  it is replaced by its null (classifier-free guidance); `cond_cfg` is the config's
  `cond` section (image conditions are made here, from the clean batch images).

  With `augment` on (the `augment` section, p > 0; pixel runs only), the batch images
  are augmented first, with a key of their own: the noised images and the image
  conditions are made from the augmented images, and the network gets the labels
  (Cond.augment). Without it nothing is drawn, and the other streams are as before.

  Randomness comes from fold_in(state.rng, step), split into named streams. With
  JAX's partitionable threefry the random numbers of each example do not depend on
  how the batch is sharded, so a run gives the same result on any number of devices.

  An update whose loss, gradient, new parameters or optimizer state hold a non-finite
  value is skipped: parameters, EMA and optimizer state stay as they were (the step
  still counts) and the metric `skipped` is 1. A huge learning rate can overflow the
  update while loss and gradient are finite, so the result is checked too.

  With `microbatches` k > 1 the gradient is the mean of the gradients of k equal
  microbatches, computed one after another (lax.scan), and one update is applied. The
  noise, times and condition dropout are drawn for the whole batch first, so each
  example gets the same randomness as without microbatches; only the network's
  dropout masks differ (a key per microbatch). Microbatch i holds the examples
  i, i + k, i + 2k, ...: an equal share of every device's slice of the batch.

  A learned schedule (diff.schedule.params set) is trained with the network: its
  parameters are state.params[learned_schedule.PARAMS_KEY], the loss is VDM's bound
  and the schedule's gradient learned_schedule.loss_and_grads's.
  """
  mcfg = model.config
  cond_cfg = cond_cfg if cond_cfg is not None else conditions.NO_IMAGE

  def train_step(state: TrainState, batch: dict, encoder_params=None
                 ) -> tuple[TrainState, dict]:
    key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    augment_labels = None
    if augment is not None and augment.on:
      images, augment_labels = augment_lib.augment(
          batch["image"], jax.random.fold_in(key, AUGMENT_STREAM), augment)
      batch = {**batch, "image": images}
    pixels, latent_encode = batch.get("image"), None
    # A stream apart: the pixel runs' streams stay as they were.
    encode_key = jax.random.fold_in(key, ENCODE_STREAM)
    if sample_cached is not None:  # A latent cache's batch: posteriors, no pixels.
      moments = batch["moments"]
      batch = {k: v for k, v in batch.items() if k != "moments"}
      batch["image"] = sample_cached(moments, encode_key)
    elif encode is not None:
      batch = {**batch, "image": encode(encoder_params, pixels, encode_key)}
      latent_encode = lambda x: encode(encoder_params, x)
    loss_key, dropout_key, drop_key, degrade_key = jax.random.split(key, 4)
    inputs = dict(batch)
    if cond_cfg.image:  # Made from the clean images (pixels, in latent diffusion too).
      spec = conditions.IMAGE_CONDITIONS[cond_cfg.image]
      inputs.update(spec.degrade(pixels, degrade_key, cond_cfg))
    cond = conditions.make_cond(mcfg, cond_cfg, inputs, batch["image"].shape[1],
                                latent_encode)
    cond = conditions.drop(cond, drop_key, dropout, mcfg.num_classes)
    if augment_labels is not None:  # Not a guided condition: never dropped.
      cond = cond.replace(augment=augment_labels)

    if diff.schedule.params is not None:
      loss, grads = _learned_loss_and_grads(model, diff, state.params, batch["image"], cond,
                                            loss_key, dropout_key)
    elif microbatches == 1:
      def loss_fn(params):
        def apply(x_t, t):
          return model.apply({"params": params}, x_t, t, cond, train=True,
                             rngs={"dropout": dropout_key})
        return diffusion.denoising_loss(apply, diff, batch["image"], loss_key)

      (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    else:
      noise = diffusion.draw_noise(diff, batch["image"], loss_key)
      loss, grads = _accumulated(model, diff, state.params, (batch["image"], noise, cond),
                                 dropout_key, microbatches)
    return apply_gradients(state, loss, grads, tx, ema_decay)

  return train_step


def _learned_loss_and_grads(model: UNet, diff: diffusion.Diffusion, params, x0, cond,
                            loss_key, dropout_key):
  """(loss, gradients of every parameter) with a learned schedule (module docstring of
  core.learned_schedule): the network and endpoints minimise E[L], the shape E[L^2]."""
  noise_key, decoder_key = jax.random.split(loss_key)
  t, _, eps = diffusion.draw_noise(diff, x0, noise_key)
  key = learned_schedule.PARAMS_KEY
  net_params = {k: v for k, v in params.items() if k != key}

  def per_example(net, values):
    def eps_fn(z, t):
      return model.apply({"params": net}, diffusion.model_input(diff, z, t), t, cond,
                         train=True, rngs={"dropout": dropout_key})
    return learned_schedule.vlb_per_example(eps_fn, values, x0, t, eps, decoder_key)

  loss, _, (g_net, g_schedule) = learned_schedule.loss_and_grads(
      per_example, net_params, params[key], t)
  return loss, {**g_net, key: g_schedule}


def apply_gradients(state: TrainState, loss: jax.Array, grads, tx: optax.GradientTransformation,
                    ema_decay: float, metrics: dict | None = None
                    ) -> tuple[TrainState, dict]:
  """One optimizer update of every parameter with `grads`, and the EMA; an update with
  a non-finite loss, gradient or result is skipped (the state stays, the step counts).
  Returns (new state, metrics: loss, grad_norm, skipped and `metrics`)."""
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  ema = jax.tree.map(lambda e, p: ema_decay * e + (1.0 - ema_decay) * p,
                     state.ema_params, params)
  grad_norm = optax.global_norm(grads)
  # The EMA needs no check: with a decay in [0, 1) it is a convex combination of
  # finite values.
  ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & all_finite((params, opt_state))
  metrics = {**(metrics or {}), "loss": loss, "grad_norm": grad_norm,
             "skipped": 1.0 - ok.astype(jnp.float32)}
  # One conditional over the whole update: a select per leaf makes XLA's CPU
  # compiler take minutes and gigabytes for the tiny test U-Net.
  params, ema, opt_state = jax.lax.cond(
      ok, lambda: (params, ema, opt_state),
      lambda: (state.params, state.ema_params, state.opt_state))
  new_state = state.replace(step=state.step + 1, params=params, ema_params=ema,
                            opt_state=opt_state)
  return new_state, metrics


def _accumulated(model: UNet, diff: diffusion.Diffusion, params, examples, dropout_key,
                 k: int):
  """(mean loss, mean gradient) over k microbatches of `examples` (x0, noise, cond)."""

  def grad_of(i, micro):
    x0, (t, iw, eps), cond = micro

    def loss_fn(p):
      def apply(x_t, t):
        return model.apply({"params": p}, x_t, t, cond, train=True,
                           rngs={"dropout": jax.random.fold_in(dropout_key, i)})
      return diffusion.loss_given_noise(apply, diff, x0, t, iw, eps)[0]
    return jax.value_and_grad(loss_fn)(params)

  # Sums in float32 at least, so that bfloat16 parameters do not round each addition.
  wide = lambda p: jnp.zeros(p.shape, jnp.promote_types(p.dtype, jnp.float32))

  def body(carry, xs):
    loss, grads = grad_of(*xs)
    return jax.tree.map(lambda c, g: c + g, carry, (loss, grads)), None

  zeros = (jnp.zeros((), jnp.float32), jax.tree.map(wide, params))
  # Microbatch i = examples i, i + k, ...: each device keeps its own.
  micro = jax.tree.map(lambda a: mesh_lib.split_per_device(a, k), examples)
  (loss, grads), _ = jax.lax.scan(body, zeros, (jnp.arange(k), micro))
  grads = jax.tree.map(lambda g, p: (g / k).astype(p.dtype), grads, params)
  return loss / k, grads


# Arrays below this size are checked together (all_finite). It is mesh.fsdp_min_size's
# default, so the arrays fsdp splits are checked where they lie; a smaller
# mesh.fsdp_min_size gathers its small split arrays for the check.
CHECK_TOGETHER_BELOW = 4096


def all_finite(tree) -> jax.Array:
  """Whether every floating-point value of `tree` is finite (a scalar bool).

  Each large array is reduced on its own; the small ones (biases, norm scales: most
  arrays, few bytes) in one reduction over their concatenation, which XLA fuses rather
  than writes out. A kernel per array made this check 40% of the tests' tiny U-Net's
  compile time on the CPU."""
  small, ok = {}, jnp.asarray(True)
  for x in jax.tree.leaves(tree):
    dtype = jnp.result_type(x)
    if not jnp.issubdtype(dtype, jnp.inexact):
      continue
    if x.size < CHECK_TOGETHER_BELOW:
      small.setdefault(dtype, []).append(jnp.ravel(x))
    else:
      ok = ok & jnp.all(jnp.isfinite(x))
  for xs in small.values():
    ok = ok & jnp.all(jnp.isfinite(jnp.concatenate(xs)))
  return ok
