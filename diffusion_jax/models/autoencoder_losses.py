"""Training losses of the KL autoencoder, as in latent diffusion's LPIPSWithDiscriminator.

The autoencoder minimises

  nll + kl_weight * KL(q(z|x) || N(0, I)) + d_weight * disc_factor * g_loss

  nll     = sum over pixels of |x - x_rec| (or its square) + perceptual_weight * LPIPS,
            averaged over the batch (LDM's sum over pixels, so the scale grows with the
            image; its learned logvar is left out: LDM does not optimise it, so it stays 0)
  KL      = 0.5 sum_latent (mu^2 + sigma^2 - 1 - log sigma^2), averaged over the batch
  g_loss  = -mean D(x_rec), a PatchGAN discriminator's logits on the reconstruction
  d_weight = disc_weight * |grad nll| / (|grad g_loss| + 1e-4), both gradients taken at
            the decoder's last layer (Esser et al. 2021), clipped to [0, 1e4] and not
            differentiated
  disc_factor = 0 before step disc_start, then `disc_factor` (the adversarial term is
            switched on late, once reconstructions are good)

and the discriminator minimises disc_factor * hinge loss (or the "vanilla" softplus
loss). The discriminator is taming-transformers' NLayerDiscriminator with GroupNorm in
place of BatchNorm: it keeps no running statistics, so both losses stay pure functions
of their parameters, and real and fake batches are not normalised with different
statistics as BatchNorm in train mode does.

LPIPS (Zhang et al. 2018) needs VGG16 weights that are not shipped: give a file path
(`load_lpips`), or leave perceptual_weight at 0 (the default here; LDM used 1.0).

A train step alternates the two, each with its own optimizer (LDM: Adam, betas (0.5, 0.9)):

  (loss, aux), grads = jax.value_and_grad(autoencoder_loss, has_aux=True)(
      params, disc_params, batch["image"], key, step, model, cfg)
  (d_loss, d_metrics), d_grads = jax.value_and_grad(discriminator_loss, has_aux=True)(
      disc_params, batch["image"], aux["reconstruction"], step, cfg)
"""

import dataclasses
import os
from typing import Any, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax.models.autoencoder import (AutoencoderKL, DiagonalGaussian, parse_fields,
                                              require)

Array = jax.Array

RECONSTRUCTIONS = {
    "l1": lambda x, y: jnp.abs(x - y),
    "l2": lambda x, y: jnp.square(x - y),
}


def hinge_d_loss(logits_real: Array, logits_fake: Array) -> Array:
  return 0.5 * (jnp.mean(jax.nn.relu(1.0 - logits_real)) + jnp.mean(jax.nn.relu(1.0 + logits_fake)))


def vanilla_d_loss(logits_real: Array, logits_fake: Array) -> Array:
  return 0.5 * (jnp.mean(jax.nn.softplus(-logits_real)) + jnp.mean(jax.nn.softplus(logits_fake)))


DISC_LOSSES = {"hinge": hinge_d_loss, "vanilla": vanilla_d_loss}


@dataclasses.dataclass(frozen=True)
class AutoencoderLossConfig:
  """Weights of the autoencoder's loss; defaults are LDM's kl-f8 recipe, LPIPS aside."""
  reconstruction: str = "l1"  # RECONSTRUCTIONS.
  kl_weight: float = 1e-6
  # LPIPS, added to the reconstruction error of every pixel; needs lpips_weights.
  perceptual_weight: float = 0.0
  lpips_weights: str = ""  # A file for `load_lpips`.
  # The adversarial term: disc_weight = 0 turns the discriminator off.
  disc_weight: float = 0.5
  disc_factor: float = 1.0
  disc_start: int = 50001
  disc_loss: str = "hinge"  # DISC_LOSSES.
  disc_channels: int = 64
  disc_layers: int = 3
  disc_norm_groups: int = 32

  def __post_init__(self):
    require(self.reconstruction in RECONSTRUCTIONS,
            f"reconstruction={self.reconstruction!r} is unknown; known: {sorted(RECONSTRUCTIONS)}")
    require(self.disc_loss in DISC_LOSSES,
            f"disc_loss={self.disc_loss!r} is unknown; known: {sorted(DISC_LOSSES)}")
    for name in ("kl_weight", "perceptual_weight", "disc_weight", "disc_factor", "disc_start"):
      require(getattr(self, name) >= 0, f"{name}={getattr(self, name)} must be >= 0")
    require(self.perceptual_weight == 0 or self.lpips_weights,
            f"perceptual_weight={self.perceptual_weight} needs LPIPS's VGG16 weights: set "
            "lpips_weights to their file (see load_lpips), or perceptual_weight=0")
    require(self.disc_layers >= 1, f"disc_layers={self.disc_layers} must be >= 1")
    require(self.disc_channels >= 1 and self.disc_norm_groups >= 1
            and (2 * self.disc_channels) % self.disc_norm_groups == 0,
            f"disc_channels={self.disc_channels} times 2 must be a multiple of "
            f"disc_norm_groups={self.disc_norm_groups}")

  @property
  def use_discriminator(self) -> bool:
    return self.disc_weight > 0 and self.disc_factor > 0

  @classmethod
  def from_config(cls, section: Mapping[str, Any]) -> "AutoencoderLossConfig":
    return cls(**parse_fields(cls, section))


# --- KL.

def kl_to_standard_normal(mean: Array, logvar: Array) -> Array:
  """KL(N(mean, exp(logvar)) || N(0, I)) of each example, summed over all latent dims."""
  kl = 0.5 * (jnp.square(mean) + jnp.exp(logvar) - 1.0 - logvar)
  return jnp.sum(kl.reshape(kl.shape[0], -1), axis=1)


def kl_loss(posterior: DiagonalGaussian) -> Array:
  """The KL term: summed over latent dims, averaged over the batch."""
  return jnp.mean(kl_to_standard_normal(posterior.mean, posterior.logvar))


# --- PatchGAN discriminator.

def discriminator_output_size(size: int, num_layers: int) -> int:
  """Side of the logit map for images of side `size` (4x4 convs, padding 1)."""
  for _ in range(num_layers):
    size = (size - 2) // 2 + 1  # Stride 2.
  return size - 2  # Two stride-1 convs.


class NLayerDiscriminator(nn.Module):
  """taming-transformers' PatchGAN (Isola et al. 2017): 4x4 convs, stride 2 then 1,
  channels doubling up to 8x, LeakyReLU(0.2); one logit per overlapping patch.
  GroupNorm replaces BatchNorm (see the module docstring)."""
  channels: int = 64
  num_layers: int = 3
  norm_groups: int = 32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    side = min(x.shape[1:3])
    if discriminator_output_size(side, self.num_layers) < 1:
      raise ValueError(f"images of side {side} are too small for a {self.num_layers}-layer "
                       "discriminator; use fewer disc_layers")
    # taming's init: conv weights ~ N(0, 0.02).
    conv = lambda f, stride, bias: nn.Conv(
        f, (4, 4), strides=(stride, stride), padding=((1, 1), (1, 1)), use_bias=bias,
        kernel_init=nn.initializers.normal(0.02))
    h = nn.leaky_relu(conv(self.channels, 2, True)(x), 0.2)
    for n in range(1, self.num_layers + 1):
      # No bias before a norm that has its own shift.
      h = conv(self.channels * min(2**n, 8), 2 if n < self.num_layers else 1, False)(h)
      h = nn.leaky_relu(nn.GroupNorm(self.norm_groups)(h), 0.2)
    return conv(1, 1, True)(h)


def make_discriminator(cfg: AutoencoderLossConfig) -> NLayerDiscriminator:
  return NLayerDiscriminator(cfg.disc_channels, cfg.disc_layers, cfg.disc_norm_groups)


def init_discriminator(key: Array, cfg: AutoencoderLossConfig, image_shape) -> dict:
  x = jnp.zeros((1, *image_shape[1:]), jnp.float32)
  return make_discriminator(cfg).init(key, x)["params"]


def disc_factor(cfg: AutoencoderLossConfig, step: Array) -> Array:
  """0 before step `disc_start`, then `cfg.disc_factor` (taming's adopt_weight)."""
  return jnp.where(step >= cfg.disc_start, cfg.disc_factor, 0.0)


def adaptive_disc_weight(nll_grad: Array, g_grad: Array) -> Array:
  """|grad nll| / (|grad g_loss| + 1e-4) at the decoder's last layer, clipped to
  [0, 1e4], as a constant: it balances the two terms without being optimised."""
  w = jnp.linalg.norm(nll_grad) / (jnp.linalg.norm(g_grad) + 1e-4)
  return jax.lax.stop_gradient(jnp.clip(w, 0.0, 1e4))


# --- LPIPS.

# torchvision's VGG16 `features` indices of the convs of each stage; a ReLU follows
# each conv and a 2x2 max pool precedes every stage but the first. LPIPS compares the
# last ReLU of each stage (relu1_2 ... relu5_3).
VGG16_STAGES = ((0, 2), (5, 7), (10, 12, 14), (17, 19, 21), (24, 26, 28))
# LPIPS's ScalingLayer: [-1, 1] images to the ImageNet statistics VGG was trained on.
_LPIPS_SHIFT = np.array([-0.030, -0.088, -0.188], np.float32)
_LPIPS_SCALE = np.array([0.458, 0.448, 0.450], np.float32)


def load_lpips(path: str) -> dict:
  """LPIPS weights from one .npz, .safetensors or torch file holding torchvision's VGG16
  `features.N.weight/bias` tensors and LPIPS's `linK.model.1.weight` (k = 0..4, from
  the lpips package's weights/v0.1/vgg.pth or taming's vgg_lpips). Merge the two, e.g.:

    sd = torchvision.models.vgg16(weights="IMAGENET1K_V1").state_dict()
    sd = {k: v for k, v in sd.items() if k.startswith("features.")}
    sd.update(torch.load("vgg.pth"))
    safetensors.torch.save_file(sd, "lpips_vgg16.safetensors")

  Widths are read from the file (they must chain: each conv takes the previous one's
  channels, each lin takes its stage's), so a narrower network of the same layout also
  loads. Raises ValueError naming the first missing or mis-shaped tensor.
  """
  from diffusion_jax.models import convert_vae  # Its readers import torch lazily.
  if not os.path.isfile(path):
    raise ValueError(f"LPIPS weights {path!r}: no such file")
  if path.endswith(".npz"):
    with np.load(path, allow_pickle=False) as f:
      state = {k: np.asarray(f[k], np.float32) for k in f.files}
  else:
    state = convert_vae.read_state_dict(path)

  def get(name, ndim):
    if name not in state:
      raise ValueError(f"LPIPS weights {path!r}: missing tensor {name!r}")
    t = state[name]
    if t.ndim != ndim:
      raise ValueError(f"LPIPS weights {path!r}: tensor {name!r} has shape {t.shape}")
    return t

  vgg, lin, channels = {}, {}, 3
  for k, stage in enumerate(VGG16_STAGES):
    for i in stage:
      w, b = get(f"features.{i}.weight", 4), get(f"features.{i}.bias", 1)
      if w.shape[1:] != (channels, 3, 3) or b.shape != w.shape[:1]:
        raise ValueError(f"LPIPS weights {path!r}: tensor 'features.{i}.weight' has shape "
                         f"{w.shape}, expected (out, {channels}, 3, 3)")
      vgg[str(i)] = {"kernel": w.transpose(2, 3, 1, 0), "bias": b}
      channels = w.shape[0]
    w = get(f"lin{k}.model.1.weight", 4)
    if w.shape != (1, channels, 1, 1):
      raise ValueError(f"LPIPS weights {path!r}: tensor 'lin{k}.model.1.weight' has shape "
                       f"{w.shape}, expected (1, {channels}, 1, 1)")
    lin[str(k)] = w.reshape(channels)
  return {"vgg": vgg, "lin": lin}


def _vgg_features(vgg: dict, x: Array) -> list[Array]:
  h = (x - _LPIPS_SHIFT) / _LPIPS_SCALE
  feats = []
  for s, stage in enumerate(VGG16_STAGES):
    if s:
      h = nn.max_pool(h, (2, 2), strides=(2, 2))
    for i in stage:
      h = jax.lax.conv_general_dilated(h, vgg[str(i)]["kernel"], (1, 1), ((1, 1), (1, 1)),
                                       dimension_numbers=("NHWC", "HWIO", "NHWC"))
      h = jax.nn.relu(h + vgg[str(i)]["bias"])
    feats.append(h)
  return feats


def lpips(weights: dict, x: Array, y: Array) -> Array:
  """LPIPS distance of each pair of RGB images in [-1, 1] (B, H, W, 3), H, W >= 16:
  per stage, channel-normalised VGG features, squared difference weighted per channel
  by the lin layer, averaged over positions; summed over stages."""
  feats = _vgg_features(weights["vgg"], jnp.concatenate([x, y]).astype(jnp.float32))
  total = 0.0
  for k, f in enumerate(feats):
    f = f / (jnp.sqrt(jnp.sum(jnp.square(f), axis=-1, keepdims=True)) + 1e-10)
    fx, fy = jnp.split(f, 2)
    total = total + jnp.mean(jnp.square(fx - fy) @ weights["lin"][str(k)], axis=(1, 2))
  return total


# --- The two losses of a training step.

def nll_loss(cfg: AutoencoderLossConfig, images: Array, reconstructions: Array,
             lpips_weights: Optional[dict] = None) -> tuple[Array, dict]:
  """Reconstruction (+ LPIPS) summed over pixels, averaged over the batch."""
  err = RECONSTRUCTIONS[cfg.reconstruction](images, reconstructions)
  metrics = {"rec": jnp.mean(err)}
  if cfg.perceptual_weight > 0:
    if lpips_weights is None:
      raise ValueError(f"perceptual_weight={cfg.perceptual_weight} needs the LPIPS weights: "
                       "pass lpips_weights=load_lpips(cfg.lpips_weights)")
    p = lpips(lpips_weights, images, reconstructions)
    metrics["lpips"] = jnp.mean(p)
    # LDM adds the per-image LPIPS to every pixel's error before the sum.
    err = err + cfg.perceptual_weight * p[:, None, None, None]
  return jnp.sum(err) / err.shape[0], metrics


def _with_last_layer(params: dict, kernel: Array) -> dict:
  conv_out = {**params["decoder"]["conv_out"], "kernel": kernel}
  return {**params, "decoder": {**params["decoder"], "conv_out": conv_out}}


def autoencoder_loss(params: dict, disc_params: Optional[dict], images: Array, key: Array,
                     step: Array, model: AutoencoderKL, cfg: AutoencoderLossConfig,
                     lpips_weights: Optional[dict] = None) -> tuple[Array, dict]:
  """The autoencoder's (generator's) loss; differentiate it with respect to `params`.

  Args:
    params: the AutoencoderKL's parameters.
    disc_params: the discriminator's (None when cfg.use_discriminator is False).
    images: (B, H, W, C) in [-1, 1].
    key: draws z from the posterior.
    step: the train step (turns the adversarial term on at cfg.disc_start).
    lpips_weights: `load_lpips(...)` when cfg.perceptual_weight > 0.
  Returns:
    (loss, aux): aux["reconstruction"] is x_rec for the discriminator's step, and
    aux["metrics"] the terms of the loss.
  """
  posterior = model.apply({"params": params}, images, method="encode")
  z = posterior.sample(key)
  # x_rec as a function of the decoder's last kernel, whose pullback gives both
  # gradients of the adaptive weight without another decoder pass.
  decode = lambda k: model.apply({"params": _with_last_layer(params, k)}, z, method="decode")
  rec, pullback = jax.vjp(decode, params["decoder"]["conv_out"]["kernel"])
  nll_fn = lambda r: nll_loss(cfg, images, r, lpips_weights)[0]
  nll, metrics = nll_loss(cfg, images, rec, lpips_weights)
  kl = kl_loss(posterior)
  loss = nll + cfg.kl_weight * kl
  metrics.update(nll=nll, kl=kl)
  if cfg.use_discriminator:
    if disc_params is None:
      raise ValueError("the loss has an adversarial term (disc_weight > 0): pass disc_params "
                       "(init_discriminator), or set disc_weight=0")
    disc = make_discriminator(cfg)
    g_fn = lambda r: -jnp.mean(disc.apply({"params": disc_params}, r))
    g = g_fn(rec)
    last_layer_grad = lambda fn: pullback(jax.grad(fn)(jax.lax.stop_gradient(rec)))[0]
    d_weight = cfg.disc_weight * adaptive_disc_weight(last_layer_grad(nll_fn),
                                                      last_layer_grad(g_fn))
    factor = disc_factor(cfg, step)
    loss = loss + d_weight * factor * g
    metrics.update(g_loss=g, d_weight=d_weight, disc_factor=factor)
  metrics["loss"] = loss
  return loss, {"reconstruction": rec, "metrics": metrics}


def discriminator_loss(disc_params: dict, images: Array, reconstructions: Array, step: Array,
                       cfg: AutoencoderLossConfig) -> tuple[Array, dict]:
  """The discriminator's loss on real images and (constant) reconstructions."""
  disc = make_discriminator(cfg)
  logits = lambda x: disc.apply({"params": disc_params}, jax.lax.stop_gradient(x))
  logits_real, logits_fake = logits(images), logits(reconstructions)
  factor = disc_factor(cfg, step)
  loss = factor * DISC_LOSSES[cfg.disc_loss](logits_real, logits_fake)
  return loss, {"disc_loss": loss, "logits_real": jnp.mean(logits_real),
                "logits_fake": jnp.mean(logits_fake)}
