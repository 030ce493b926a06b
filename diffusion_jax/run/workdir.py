"""What a workdir holds, checked against a run before anything is written: its
checkpoints' model, the config it was trained with, and the run's tokenizer."""

import json

import ml_collections
from etils import epath

from diffusion_jax.conditioning.tokenizer import Tokenizer
from diffusion_jax.config import files
from diffusion_jax.config.errors import ConfigError, require
from diffusion_jax.data import pipeline
from diffusion_jax.models.unet import UNetConfig
from diffusion_jax.run.spec import Spec
from diffusion_jax.training import checkpoint

# What a checkpoint means: a run may not resume or sample with other values of these.
MEANING = ("kind", "latent.autoencoder", "data.name", "data.image_key", "data.label_key", "data.text_key",
           "data.text_emb_key", "data.image_size", "data.channels", "data.num_classes",
           "model", "cond", "diffusion")
# What --mode=sample/eval may change of a run's saved config (sections and fields).
SAMPLING_FIELDS = ("sample", "eval", "data.data_dir", "mesh")


def _flat(config: ml_collections.ConfigDict) -> dict:
  def walk(node, prefix):
    for k, v in node.items():
      key = f"{prefix}{k}"
      if isinstance(v, (dict, ml_collections.ConfigDict)):
        yield from walk(v, key + ".")
      else:
        yield key, json.loads(json.dumps(v, default=list))
  return dict(walk(config, ""))


def _under(key: str, prefixes) -> bool:
  return any(key == p or key.startswith(p + ".") for p in prefixes)


def changed(old: ml_collections.ConfigDict, new: ml_collections.ConfigDict, prefixes) -> list:
  """The fields under `prefixes` whose values differ between two configs."""
  a, b = _flat(old), _flat(new)
  return sorted(k for k in set(a) | set(b) if _under(k, prefixes) and a.get(k) != b.get(k))


def model_meta(spec: Spec, tokenizer: Tokenizer | None = None) -> dict:
  """What a checkpoint must agree on with the config to be restorable (and, for text
  models, the vocabulary it was trained with)."""
  meta = {"model": json.loads(json.dumps(vars(spec.model), default=list)),
          "image_size": spec.data.image_size, "channels": spec.data.channels}
  if spec.cond.image:
    meta["cond"] = {"image": spec.cond.image, "sr_factor": spec.cond.sr_factor}
  if spec.autoencoder is not None:  # The U-Net's input is the latent of this autoencoder.
    ae = spec.autoencoder
    meta["latent"] = {"shape": list(spec.model_shape), "autoencoder_step": ae.step,
                      "scaling_factor": ae.config.scaling_factor}
  if tokenizer is not None:
    meta["vocab"] = tokenizer.vocab
  return meta


def model_meta_diff(saved: dict, want: dict) -> list[str]:
  """The fields in which a diffusion checkpoint's metadata and the config's differ."""
  saved = dict(saved)
  if saved.get("kind", "diffusion") != want.get("kind", "diffusion"):
    return ["kind"]
  # Fields added after the checkpoint was written take their defaults, which build the
  # network it was trained as.
  saved["model"] = {**json.loads(json.dumps(vars(UNetConfig()), default=list)), **saved["model"]}
  saved.pop("vocab", None)
  if saved == want:
    return []
  diff = sorted(k for k in set(saved["model"]) | set(want["model"])
                if saved["model"].get(k) != want["model"].get(k))
  diff = [f"model.{k}" for k in diff]
  diff += [k for k in ("image_size", "channels", "cond") if saved.get(k) != want.get(k)]
  if saved.get("latent") != want.get("latent"):
    diff.append("latent (latent.autoencoder: its latent shape, checkpoint step or scale)")
  return diff


def check(spec, workdir: str, mode: str, meta=model_meta, meta_diff=model_meta_diff,
          meaning=MEANING) -> checkpoint.Found:
  """Checks the workdir against the mode and run; returns its checkpoints (the newest
  that reads back first; newer unreadable ones are reported and skipped). `meta`,
  `meta_diff` and `meaning` are the run kind's (run/build.py: KINDS)."""
  require(bool(workdir), "--workdir is required")
  path = epath.Path(workdir)
  try:
    exists, is_dir = path.exists(), path.is_dir()
  except Exception as e:  # A filesystem (gs://, ...) that cannot be reached or read.
    raise ConfigError(f"cannot read workdir {workdir!r}: {_one_line(e)}") from None
  require(not exists or is_dir, f"workdir {workdir!r} exists and is not a directory")
  if mode == "train" and exists:
    checkpoint.refuse_tf_data_iterators(workdir)
  try:
    found = checkpoint.find(workdir, with_iterator=mode == "train")
  except Exception as e:
    raise ConfigError(f"cannot read the checkpoints of {workdir!r}: {_one_line(e)}") from None
  where = checkpoint.checkpoint_dir(workdir)
  if found.latest is None and found.skipped:
    raise ConfigError(f"no checkpoint in {where} can be read (steps "
                      f"{', '.join(str(s) for s, _ in found.skipped)}; see the warnings "
                      "above): move them away to start the run anew")
  if mode != "train":
    require(found.latest is not None, f"--mode={mode}: no checkpoint in {where}")
  if found.latest is None:
    return found
  step = found.latest
  want = meta(spec)
  diff = meta_diff(dict(found.meta), want)
  if diff:
    raise ConfigError(f"workdir {workdir!r} holds a checkpoint (step {step}) of an "
                      f"incompatible model: {', '.join(diff)} differ; use a new workdir")
  previous = files.load_saved(workdir)
  if previous is not None:
    diff = changed(previous, spec.config, meaning)
    require(not diff, f"workdir {workdir!r} holds a checkpoint (step {step}) trained with "
            f"other values of {', '.join(diff)} (see {files.saved_config_paths(workdir)[-1]}); "
            "they change what the checkpoint means: use the run's values or a new workdir")
  return found


def _one_line(e: BaseException) -> str:
  return " ".join(f"{type(e).__name__}: {e}".split())[:300]


def tokenizer(spec: Spec, workdir: str, found: checkpoint.Found) -> Tokenizer | None:
  """The run's tokenizer: the checkpoint's vocabulary, or (new runs) one built from
  the training split's captions and checked against the model's text fields."""
  mc = spec.model
  if mc.text != "tokens":
    return None
  if found.latest is not None:
    vocab = found.meta.get("vocab")
    require(vocab is not None, f"checkpoint {found.latest} in {workdir!r} has no vocabulary")
    return Tokenizer(vocab, mc.text_max_len)
  vocab, longest = pipeline.caption_vocab(spec.data)
  require(bool(vocab), f"the captions (data.text_key={spec.data.text_key!r}) are empty")
  require(len(vocab) + 1 <= mc.text_vocab_size,
          f"model.text_vocab_size={mc.text_vocab_size} is too small for the captions' "
          f"{len(vocab)} words (+1 for padding)")
  require(longest <= mc.text_max_len,
          f"model.text_max_len={mc.text_max_len} is shorter than the longest caption "
          f"({longest} words)")
  return Tokenizer(vocab, mc.text_max_len)


def save_config(config: ml_collections.ConfigDict, workdir: str, step: int | None) -> str:
  """Writes the resolved config. A run that resumes with other values keeps the
  earlier file and writes config_resumed_at_step_<N>.json beside it; a new run (no
  checkpoint yet) replaces the config a failed earlier attempt left."""
  text = config.to_json_best_effort(indent=2, sort_keys=True)
  path = epath.Path(workdir) / files.SAVED_CONFIG
  previous = files.saved_config_paths(workdir)
  if step is not None and previous:
    if epath.Path(previous[-1]).read_text() == text:
      return previous[-1]
    path = epath.Path(workdir) / f"config_resumed_at_step_{step}.json"
    k = 0
    while path.exists():
      k += 1
      path = epath.Path(workdir) / f"config_resumed_at_step_{step}-{k}.json"
  path.write_text(text)
  return str(path)
