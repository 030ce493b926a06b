"""Checks a run's config, mode and workdir before anything is compiled or written.

Every check raises ConfigError with a one-line message naming the field.
"""

import json
import os

import jax

from diffusion_jax import checkpoint, conditions, diffusion, samplers, schedules
from diffusion_jax.data import pipeline
from diffusion_jax.models import unet
from diffusion_jax.models.unet import UNetConfig, resolutions
from diffusion_jax.tokenizer import Tokenizer

MODES = ("train", "sample", "eval")


class ConfigError(ValueError):
  pass


def _require(ok: bool, msg: str) -> None:
  if not ok:
    raise ConfigError(msg)


def model_config(config) -> UNetConfig:
  try:
    return UNetConfig.from_config(config.model)
  except (TypeError, ValueError) as e:
    raise ConfigError(f"model: {e}") from None


def _model_json(mc: UNetConfig) -> dict:
  return json.loads(json.dumps(vars(mc), default=list))


def model_meta(config, tokenizer=None) -> dict:
  """What a checkpoint must agree on with the config to be restorable (and, for
  text models, the vocabulary it was trained with)."""
  meta = {"model": _model_json(model_config(config)),
          "image_size": config.data.image_size, "channels": config.data.channels}
  if config.cond.image:
    meta["cond"] = {"image": config.cond.image, "sr_factor": config.cond.sr_factor}
  if tokenizer is not None:
    meta["vocab"] = tokenizer.vocab
  return meta


def _check_architecture(mc: UNetConfig) -> None:
  """The score_sde / EDM / VDM options of the U-Net."""
  _require(mc.embedding in unet.EMBEDDINGS,
           f"model.embedding={mc.embedding!r} is unknown; known: {sorted(unet.EMBEDDINGS)}")
  _require(mc.fourier_scale > 0, "model.fourier_scale must be > 0")
  inputs = ["none", *unet.PROGRESSIVE_INPUTS]
  _require(mc.progressive_input in inputs,
           f"model.progressive_input={mc.progressive_input!r} is unknown; known: {sorted(inputs)}")
  _require(mc.progressive in unet.PROGRESSIVES,
           f"model.progressive={mc.progressive!r} is unknown; known: {sorted(unet.PROGRESSIVES)}")
  _require(len(mc.resample_filter) >= 2 and sum(mc.resample_filter) > 0,
           f"model.resample_filter={mc.resample_filter} needs at least two taps with a "
           "positive sum, e.g. (1, 1) or (1, 3, 3, 1)")
  uses_filter = mc.resblock_updown or "none" not in (mc.progressive, mc.progressive_input)
  _require(uses_filter or mc.resample_filter == (1, 1),
           "model.resample_filter only acts with resblock_updown or a progressive path")


def check_config(config, num_devices: int | None = None, mode: str = "train") -> None:
  num_devices = num_devices or jax.device_count()
  d, f, t, o, s = config.data, config.diffusion, config.training, config.optim, config.sample
  mc = model_config(config)

  _require(d.image_size > 0 and d.channels > 0, "data.image_size and data.channels must be > 0")
  _require(d.num_classes >= 0, "data.num_classes must be >= 0")
  _require(mc.out_channels == d.channels,
           f"model.out_channels={mc.out_channels} != data.channels={d.channels}")
  _require(mc.num_classes == d.num_classes,
           f"model.num_classes={mc.num_classes} != data.num_classes={d.num_classes}")
  levels = len(mc.ch_mult)
  _require(levels >= 1, "model.ch_mult must have at least one level")
  _require(d.image_size % 2 ** (levels - 1) == 0,
           f"data.image_size={d.image_size} is not divisible by 2^{levels - 1}: "
           f"the U-Net's {levels} levels (model.ch_mult={mc.ch_mult}) halve it {levels - 1} times")
  res = resolutions(d.image_size, levels)
  bad = [r for r in mc.attn_resolutions if r not in res]
  _require(not bad, f"model.attn_resolutions {bad} are not feature-map sizes of this U-Net "
           f"(image_size={d.image_size}, levels={levels}: sizes {res})")
  for ch in {mc.ch * k for k in mc.ch_mult}:
    _require(ch % mc.num_groups == 0,
             f"model.num_groups={mc.num_groups} does not divide the channel count {ch}")
    if mc.attn_resolutions:
      _require(ch % mc.num_heads == 0,
               f"model.num_heads={mc.num_heads} does not divide the channel count {ch}")
  _require(0.0 <= mc.dropout < 1.0, "model.dropout must be in [0, 1)")
  _check_architecture(mc)
  k = config.cond
  _require(k.image in ("",) + tuple(conditions.IMAGE_CONDITIONS),
           f"cond.image={k.image!r} is unknown; known: {sorted(conditions.IMAGE_CONDITIONS)} "
           "or '' (none)")
  want_ch = conditions.IMAGE_CONDITIONS[k.image].channels(d.channels) if k.image else 0
  _require(mc.cond_image_channels == want_ch,
           f"model.cond_image_channels={mc.cond_image_channels}, but cond.image={k.image!r} "
           f"gives {want_ch} channels")
  if k.image == "sr":
    _require(k.sr_factor >= 2 and d.image_size % k.sr_factor == 0,
             f"cond.sr_factor={k.sr_factor} must be >= 2 and divide data.image_size="
             f"{d.image_size}")
  if k.image == "inpaint":
    _require(0 < k.hole_min <= k.hole_max < 1, "cond: need 0 < hole_min <= hole_max < 1")
  bad = [r for r in mc.cond_image_resolutions if r not in res[1:]]
  _require(not bad, f"model.cond_image_resolutions {bad} are not lower feature-map sizes "
           f"of this U-Net (sizes {res[1:]})")
  _require(not mc.cond_image_resolutions or k.image,
           "model.cond_image_resolutions needs an image condition (cond.image)")
  _require(not (mc.text_vocab_size and mc.text_emb_dim),
           "model.text_vocab_size and model.text_emb_dim are exclusive: text comes as "
           "token ids or as precomputed embeddings")
  bad = [r for r in mc.cross_attn_resolutions if r not in res]
  _require(not bad, f"model.cross_attn_resolutions {bad} are not feature-map sizes of "
           f"this U-Net (sizes {res})")
  _require(not mc.text or mc.cross_attn_resolutions,
           "a text model needs model.cross_attn_resolutions (where the U-Net reads the text)")
  _require(mc.text or not mc.cross_attn_resolutions,
           "model.cross_attn_resolutions needs text (model.text_vocab_size or text_emb_dim)")
  if mc.text:
    _require(mc.text_width % mc.text_heads == 0 and mc.text_max_len > 0 and mc.text_layers >= 0,
             "model: text_heads must divide text_width; text_max_len > 0; text_layers >= 0")

  _require(f.schedule in schedules.SCHEDULES,
           f"diffusion.schedule={f.schedule!r} is unknown; known: {sorted(schedules.SCHEDULES)}")
  _require(f.prediction in diffusion.PREDICTIONS,
           f"diffusion.prediction={f.prediction!r} is unknown; known: {sorted(diffusion.PREDICTIONS)}")
  _require(f.weighting in diffusion.WEIGHTINGS,
           f"diffusion.weighting={f.weighting!r} is unknown; known: {sorted(diffusion.WEIGHTINGS)}")
  _require(f.time_sampling in ("uniform", "lognormal", "importance"),
           f"diffusion.time_sampling={f.time_sampling!r} is unknown; "
           "known: ['importance', 'lognormal', 'uniform']")
  _require(f.num_steps >= 0, "diffusion.num_steps must be >= 0 (0 = continuous time)")
  _require(f.schedule != "linear" or f.num_steps > 0,
           "diffusion.schedule='linear' is defined by its discrete betas: num_steps must be > 0")
  _require(f.schedule in ("linear", "cosine") or f.num_steps == 0,
           f"diffusion.num_steps={f.num_steps}: schedule {f.schedule!r} is continuous-time; "
           "set diffusion.num_steps=0")
  _require(f.time_sampling != "importance" or (f.weighting != "simple" and f.num_steps == 0),
           "diffusion.time_sampling='importance' needs a weighting other than 'simple' "
           "and continuous time (num_steps=0)")
  _require(0 < f.beta_start < f.beta_end < 1, "diffusion: need 0 < beta_start < beta_end < 1")
  _require(0 < f.beta_min < f.beta_max, "diffusion: need 0 < beta_min < beta_max")
  _require(f.log_snr_min < f.log_snr_max, "diffusion: need log_snr_min < log_snr_max")
  _require(0 < f.sigma_min < f.sigma_max, "diffusion: need 0 < sigma_min < sigma_max")
  _require(f.sigma_data > 0 and f.rho > 0, "diffusion.sigma_data and rho must be > 0")
  _require(0 < f.t_min < 1, "diffusion.t_min must be in (0, 1)")

  _require(t.batch_size > 0 and t.num_steps > 0, "training.batch_size and num_steps must be > 0")
  _require(t.batch_size % num_devices == 0,
           f"training.batch_size={t.batch_size} is not divisible by the {num_devices} devices")
  _require(t.batch_size % jax.process_count() == 0,
           f"training.batch_size={t.batch_size} is not divisible by the {jax.process_count()} processes")
  _require(0.0 <= t.label_dropout < 1.0, "training.label_dropout must be in [0, 1)")
  _require(t.label_dropout == 0 or d.num_classes > 0,
           "training.label_dropout > 0 needs class labels (data.num_classes > 0)")
  _require(0.0 <= t.ema_decay < 1.0, "training.ema_decay must be in [0, 1)")
  _require(t.log_every > 0 and t.checkpoint_every > 0 and t.keep_checkpoints > 0,
           "training.log_every, checkpoint_every and keep_checkpoints must be > 0")

  _require(o.lr > 0, "optim.lr must be > 0")
  _require(o.lr_schedule in ("constant", "cosine"),
           f"optim.lr_schedule={o.lr_schedule!r} is unknown; known: ['constant', 'cosine']")
  _require(0 <= o.warmup_steps, "optim.warmup_steps must be >= 0")
  _require(o.grad_clip >= 0 and o.weight_decay >= 0, "optim.grad_clip and weight_decay must be >= 0")

  _require(s.sampler in samplers.SAMPLERS,
           f"sample.sampler={s.sampler!r} is unknown; known: {sorted(samplers.SAMPLERS)}")
  _require(s.num_steps > 0, "sample.num_steps must be > 0")
  _require(s.sampler in ("ddpm", "ddim") or s.num_steps >= 2,
           f"sample.sampler={s.sampler!r} needs sample.num_steps >= 2")
  _require(s.grid in ("uniform", "edm"),
           f"sample.grid={s.grid!r} is unknown; known: ['edm', 'uniform']")
  _require(0 < s.t_min < s.t_max <= 1, "sample: need 0 < t_min < t_max <= 1")
  _require(s.lambda_max > 0 and s.rho > 0, "sample.lambda_max and rho must be > 0")
  _require(s.churn >= 0 and s.corrector_steps >= 0 and s.corrector_snr > 0,
           "sample.churn and corrector_steps must be >= 0, corrector_snr > 0")
  _require(not f.num_steps or s.num_steps <= f.num_steps,
           f"sample.num_steps={s.num_steps} exceeds diffusion.num_steps={f.num_steps}")
  _require(s.num_samples > 0 and s.batch_size > 0, "sample.num_samples and batch_size must be > 0")
  _require(s.batch_size % num_devices == 0,
           f"sample.batch_size={s.batch_size} is not divisible by the {num_devices} devices")
  _require(s.batch_size % jax.process_count() == 0,
           f"sample.batch_size={s.batch_size} is not divisible by the {jax.process_count()} processes")
  _require(s.guidance_scale == 1.0 or d.num_classes > 0,
           "sample.guidance_scale != 1 needs a class-conditional model (data.num_classes > 0)")
  _require(s.guidance_scale == 1.0 or t.label_dropout > 0,
           "sample.guidance_scale != 1 needs an unconditional branch: training.label_dropout > 0")
  _require(s.eta >= 0, "sample.eta must be >= 0")
  for name, scale, rate, has, what in [
      ("text_guidance_scale", s.text_guidance_scale, t.text_dropout, bool(mc.text), "text"),
      ("image_guidance_scale", s.image_guidance_scale, t.image_dropout, bool(k.image),
       "an image condition")]:
    drop = name.replace("guidance_scale", "dropout")
    _require(0.0 <= rate < 1.0 and (rate == 0 or has),
             f"training.{drop}={rate} must be in [0, 1) and needs a model with {what}")
    _require(scale == 1.0 or (has and rate > 0),
             f"sample.{name}={scale} needs a model with {what} trained with "
             f"training.{drop} > 0 (its unconditional branch)")

  e = config.eval
  _require(not (mc.text or k.image) or mode != "eval",
           "--mode=eval (likelihood) supports class-conditional and unconditional models "
           "only; this model takes text or an image condition")
  _require(e.method in ("ode", "vlb"), f"eval.method={e.method!r} is unknown; known: ['ode', 'vlb']")
  _require(e.method != "vlb" or f.num_steps > 0,
           "eval.method='vlb' is the discrete-time bound: it needs diffusion.num_steps > 0")
  _require(e.batch_size > 0 and e.batch_size % num_devices == 0,
           f"eval.batch_size={e.batch_size} must be > 0 and divisible by the {num_devices} devices")
  _require(e.ode_steps > 0 and e.hutchinson_probes > 0 and e.num_examples >= 0,
           "eval.ode_steps and hutchinson_probes must be > 0, num_examples >= 0")
  _require(0 < e.t_min < e.t_max <= 1, "eval: need 0 < t_min < t_max <= 1")


def check_data(config) -> None:
  try:
    pipeline.get_builder(config.data.name, config.data.data_dir or None)
  except pipeline.DataError as e:
    raise ConfigError(f"data: {e}") from None


def check_workdir(config, workdir: str, mode: str) -> int | None:
  """Checks the workdir against the mode and config; returns its latest checkpoint step."""
  _require(bool(workdir), "--workdir is required")
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise ConfigError(f"workdir {workdir!r} exists and is not a directory")
  step = checkpoint.latest_step(workdir)
  if mode in ("sample", "eval"):
    _require(step is not None,
             f"--mode={mode}: no checkpoint in {checkpoint.checkpoint_dir(workdir)}")
  if step is not None:
    saved = checkpoint.read_meta(workdir, step)
    # Fields added after the checkpoint was written take their defaults, which build
    # the network it was trained as.
    saved["model"] = {**_model_json(UNetConfig()), **saved["model"]}
    want = model_meta(config)
    saved.pop("vocab", None)
    if saved != want:
      diff = sorted(k for k in set(saved["model"]) | set(want["model"])
                    if saved["model"].get(k) != want["model"].get(k))
      diff += [k for k in ("image_size", "channels", "cond") if saved.get(k) != want.get(k)]
      raise ConfigError(f"workdir {workdir!r} holds a checkpoint (step {step}) of an "
                        f"incompatible model: {', '.join(diff)} differ; use a new workdir")
  return step


def check_text(config, workdir: str, step: int | None) -> Tokenizer | None:
  """The run's tokenizer: the checkpoint's vocabulary, or (new runs) one built from
  the training split's captions and checked against the model's text fields."""
  mc = model_config(config)
  if mc.text != "tokens":
    return None
  if step is not None:
    vocab = checkpoint.read_meta(workdir, step).get("vocab")
    _require(vocab is not None, f"checkpoint {step} in {workdir!r} has no vocabulary")
    return Tokenizer(vocab, mc.text_max_len)
  try:
    vocab, longest = pipeline.caption_vocab(config.data)
  except pipeline.DataError as e:
    raise ConfigError(f"data: {e}") from None
  _require(bool(vocab), f"the captions (data.text_key={config.data.text_key!r}) are empty")
  _require(len(vocab) + 1 <= mc.text_vocab_size,
           f"model.text_vocab_size={mc.text_vocab_size} is too small for the captions' "
           f"{len(vocab)} words (+1 for padding)")
  _require(longest <= mc.text_max_len,
           f"model.text_max_len={mc.text_max_len} is shorter than the longest caption "
           f"({longest} words)")
  return Tokenizer(vocab, mc.text_max_len)


def check_labels(labels, num_classes: int) -> None:
  """Class labels given for sampling, against the model's classes."""
  _require(num_classes > 0, "--labels given, but this model is not class-conditional")
  bad = sorted({int(v) for v in labels if not 0 <= v < num_classes})
  _require(not bad, f"labels {bad} are outside [0, {num_classes}) for this model")


def check_cascade(config, base_config, base_workdir: str, num_devices: int):
  """A base model's workdir, checked to feed this super-resolution model; returns the
  base's latest step and tokenizer."""
  _require(config.cond.image == "sr",
           "--cascade_from needs a super-resolution model (cond.image='sr')")
  step = check_all(base_config, base_workdir, "sample", num_devices)
  want = config.data.image_size // config.cond.sr_factor
  got = (base_config.data.image_size, base_config.data.channels)
  _require(got == (want, config.data.channels),
           f"--cascade_from {base_workdir!r}: the base model makes {got[0]}x{got[0]} images "
           f"with {got[1]} channels; this model takes {want}x{want} with {config.data.channels}")
  return step, check_text(base_config, base_workdir, step)


def check_mode(mode: str) -> None:
  _require(mode in MODES, f"unknown --mode={mode!r}; known: {list(MODES)}")


def check_all(config, workdir: str, mode: str, num_devices: int | None = None) -> int | None:
  """Every check of a run, before anything is compiled or written."""
  check_mode(mode)
  check_config(config, num_devices, mode)
  check_data(config)
  return check_workdir(config, workdir, mode)


__all__ = ["ConfigError", "MODES", "check_all", "check_cascade", "check_config", "check_data",
           "check_labels", "check_text", "check_workdir", "model_config", "model_meta"]
