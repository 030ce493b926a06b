"""Where the conditions of a sample set come from, checked before anything is sampled.

Each condition the model takes is read from, in order: the command line (`--labels`,
`--prompt`, a prompts file), a conditions file or directory (`--cond`), a base model's
samples (a cascade), or else the first `sample.num_samples` examples of the dataset's
`sample.cond_split` (image conditions are then made from its images, which are kept
as the `reference`). Images in files are uint8; they become [-1, 1] floats here.
"""

import io
from typing import NamedTuple

import jax
import numpy as np
from etils import epath
from PIL import Image

from diffusion_jax.conditioning import conditions
from diffusion_jax.conditioning.tokenizer import Tokenizer, TokenizerError
from diffusion_jax.config.errors import ConfigError
from diffusion_jax.data import pipeline


class InputError(ConfigError):
  """Conditions that do not fit the model: a clear message, nothing written."""


def balanced_labels(num_samples: int, num_classes: int) -> np.ndarray:
  """Equal numbers of each class (as equal as num_samples allows), grouped by class."""
  if not num_classes:
    return np.zeros((num_samples,), np.int32)
  return np.sort(np.arange(num_samples) % num_classes).astype(np.int32)


class Given(NamedTuple):
  """Conditions given by the user; None = not given."""
  labels: np.ndarray | None = None
  prompts: list[str] | None = None
  cond_path: str | None = None  # An .npz, or a directory of PNGs (image conditions).
  images: dict | None = None  # Image conditions already in [-1, 1] (a cascade's samples).


def read_prompts(path: str) -> list[str]:
  """One prompt per line; blank lines are skipped."""
  if not epath.Path(path).is_file():
    raise InputError(f"prompts file {path!r} does not exist")
  prompts = [line.strip() for line in epath.Path(path).read_text().splitlines() if line.strip()]
  if not prompts:
    raise InputError(f"prompts file {path!r} has no prompts")
  return prompts


def _to_float(x: np.ndarray) -> np.ndarray:
  return x.astype(np.float32) / 127.5 - 1.0


def _read_cond_path(path: str, keys: tuple[str, ...]) -> dict:
  """uint8 arrays for `keys` from an .npz, or a directory of PNGs (one per sample, in
  name order; for inpainting an RGBA PNG's alpha is the mask, 0 = hole)."""
  directory = epath.Path(path)
  if directory.is_dir():
    names = sorted(p.name for p in directory.iterdir() if p.name.lower().endswith(".png"))
    if not names:
      raise InputError(f"--cond directory {path!r} has no .png files")
    imgs = [np.asarray(Image.open(io.BytesIO((directory / n).read_bytes()))) for n in names]
    if len({i.shape for i in imgs}) > 1:
      raise InputError(f"--cond directory {path!r}: the PNGs differ in size or channels")
    arr = np.stack(imgs)
    if arr.ndim == 3:
      arr = arr[..., None]
    if keys == ("masked", "mask"):
      if arr.shape[-1] != 4:
        raise InputError(f"--cond directory {path!r}: inpainting takes RGBA PNGs "
                         "(alpha 0 = hole); these have "
                         f"{arr.shape[-1]} channels")
      return {"masked": arr[..., :3], "mask": (arr[..., 3:] > 0).astype(np.uint8) * 255}
    return {keys[0]: arr}
  if not path.endswith(".npz") or not epath.Path(path).is_file():
    raise InputError(f"--cond {path!r} is neither an .npz file nor a directory of PNGs")
  with np.load(io.BytesIO(epath.Path(path).read_bytes())) as f:
    missing = [k for k in keys if k not in f]
    if missing:
      raise InputError(f"--cond {path!r} lacks {missing} (has {sorted(f.files)}); this "
                       f"model's image condition needs {list(keys)}")
    out = {k: np.asarray(f[k]) for k in keys}
  if "mask" in out and out["mask"].max() <= 1:
    out["mask"] = out["mask"].astype(np.uint8) * 255  # 0/1 masks are fine too.
  return out


def check_image_inputs(arrays: dict, want: dict, source: str) -> None:
  for k, shape in want.items():
    got = arrays[k].shape[1:]
    if arrays[k].ndim != 4 or got != shape:
      raise InputError(f"{source}: {k!r} images have shape {tuple(got)} (h, w, channels); "
                       f"this model takes {shape}")
  if len({len(v) for v in arrays.values()}) > 1:
    raise InputError(f"{source}: {list(arrays)} have different numbers of images")


def gather(spec, given: Given, tokenizer: Tokenizer | None) -> tuple[dict, dict]:
  """(inputs, record): the model's conditions for each sample ([-1, 1] floats, token
  ids, labels) and what to save beside the samples (uint8 images, prompts, labels,
  reference images). `spec` is the run's (diffusion_jax.run.spec.Spec)."""
  mcfg_text = spec.model.text
  kind = spec.cond.image
  nc = spec.data.num_classes
  counts = {}
  if given.labels is not None:
    counts["--labels"] = len(given.labels)
  if given.prompts is not None:
    counts["prompts"] = len(given.prompts)
  if given.labels is not None and not nc:
    raise InputError("--labels given, but this model is not class-conditional")
  if given.labels is not None:
    bad = sorted({int(v) for v in given.labels if not 0 <= v < nc})
    if bad:
      raise InputError(f"labels {bad} are outside [0, {nc}) for this model")
  if given.prompts is not None and mcfg_text != "tokens":
    raise InputError("prompts given, but this model was not trained on text "
                     "(model.text_vocab_size = 0)")
  if (given.cond_path or given.images) and not kind:
    raise InputError("conditioning images given, but this model takes no image "
                     "condition (cond.image is empty)")

  images = None
  if kind:
    spec_img = conditions.IMAGE_CONDITIONS[kind]
    want = spec_img.shapes(spec.data.image_size, spec.data.channels, spec.cond)
    if given.images is not None:
      images = given.images
    elif given.cond_path:
      raw = _read_cond_path(given.cond_path, spec_img.keys)
      check_image_inputs(raw, want, f"--cond {given.cond_path}")
      images = {k: _to_float(v) for k, v in raw.items()}
      if "mask" in images:
        images["mask"] = (images["mask"] > 0).astype(np.float32)
    if images is not None:
      counts["conditioning images"] = len(next(iter(images.values())))

  if len(set(counts.values())) > 1:
    raise InputError(f"the given conditions disagree on the number of samples: {counts}")
  n = next(iter(counts.values())) if counts else spec.sample_set.num_samples

  need_split_text = mcfg_text and given.prompts is None
  need_split_images = kind and images is None
  split = None
  if need_split_text or need_split_images:
    split = load_split(spec, spec.sample_set.cond_split, n)
    if len(split["image"]) < n:
      raise InputError(f"sample.cond_split={spec.sample_set.cond_split!r} has only "
                       f"{len(split['image'])} examples; {n} samples asked for")

  inputs, record = {}, {}
  if nc:
    labels = given.labels
    if labels is None:
      labels = (split["label"].astype(np.int32) if split is not None and "label" in split
                else balanced_labels(n, nc))
    inputs["label"] = record["labels"] = np.asarray(labels, np.int32)
  if mcfg_text == "tokens":
    prompts = given.prompts if given.prompts is not None else list(split["caption"])
    inputs["tokens"] = _tokens(tokenizer, prompts)
    record["prompts"] = np.asarray(prompts)
    if given.prompts is None:  # Captions of held-out images: keep the images to compare.
      record["reference"] = split["image"]
  elif mcfg_text == "embeddings":
    inputs.update(_embeddings(split))
  if kind:
    if images is None:
      images = _degraded(spec, split["image"], jax.random.key(spec.sample_set.seed))
      record["reference"] = split["image"]
    inputs.update(images)
    for k, v in images.items():
      record[k] = np.clip(np.round((v + 1.0) * 127.5), 0, 255).astype(np.uint8) \
          if k != "mask" else (v > 0).astype(np.uint8)
  if not inputs:
    record["count"] = np.asarray(n)
  return inputs, record


def _tokens(tokenizer: Tokenizer, prompts: list[str]) -> np.ndarray:
  try:
    return tokenizer.encode(prompts)
  except TokenizerError as e:
    raise InputError(str(e)) from None


def _embeddings(split: dict) -> dict:
  emb = split["text_emb"].astype(np.float32)
  return {"text_emb": emb, "text_mask": np.any(emb != 0, axis=-1)}


def _degraded(spec, images_u8: np.ndarray, key) -> dict:
  """The image condition's inputs made from clean uint8 images, as training makes them."""
  spec_img = conditions.IMAGE_CONDITIONS[spec.cond.image]
  return {k: np.asarray(v) for k, v in
          spec_img.degrade(_to_float(images_u8), key, spec.cond).items()}


def load_split(spec, split: str, num_examples: int | None) -> dict:
  """A split's first examples with what the model's conditions are made from."""
  text = spec.model.text
  return pipeline.load_split_numpy(spec.data, split, num_examples,
                                   captions=text == "tokens", text_emb=text == "embeddings")


def split_conditions(spec, split: dict, tokenizer: Tokenizer | None, key) -> dict:
  """The model's inputs for each example of a loaded split (load_split): its own label,
  caption or text embedding, and its image condition made from its image with `key`
  (as training makes them); {} for an unconditional model."""
  inputs = {}
  if spec.data.num_classes:
    inputs["label"] = split["label"].astype(np.int32)
  if spec.model.text == "tokens":
    inputs["tokens"] = _tokens(tokenizer, list(split["caption"]))
  elif spec.model.text == "embeddings":
    inputs.update(_embeddings(split))
  if spec.cond.image:
    inputs.update(_degraded(spec, split["image"], key))
  return inputs
