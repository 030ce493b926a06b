"""One record -> one training example, deterministic per example position.

An example is a dict of numpy arrays: `image` float32 in [-1, 1] (H, W, C) and the
conditions the model takes: `label` int32 (); `tokens` int32 (L,) for captions tokenized
with the run's vocabulary; `text_emb` float32 (L, D) and `text_mask` bool (L,) for
precomputed text embeddings (a token whose embedding is all zeros is padding).
"""

import dataclasses
import hashlib
import struct
from typing import NamedTuple

import numpy as np
from PIL import Image

from diffusion_jax.conditioning.tokenizer import Tokenizer

_FLIP_STREAM = 0xF11B  # Separates the flips' seeds from other uses of the run seed.
_PIL_MODES = {1: "L", 3: "RGB"}


class TextSpec(NamedTuple):
  """Which text a batch carries: captions as token ids, or precomputed embeddings."""
  tokenizer: Tokenizer | None = None
  emb_key: str = ""


def fit_image(image: np.ndarray, size: int) -> np.ndarray:
  """uint8 (H, W, C) -> uint8 (size, size, C): the central square, area-resized."""
  h, w = image.shape[:2]
  if h != w:
    m = min(h, w)
    top, left = (h - m) // 2, (w - m) // 2
    image = image[top:top + m, left:left + m]
  if image.shape[0] == size:
    return image
  channels = image.shape[-1]
  pil = Image.fromarray(image[..., 0] if channels == 1 else image, _PIL_MODES[channels])
  out = np.asarray(pil.resize((size, size), Image.Resampling.BOX), np.uint8)
  return out.reshape(size, size, channels)


def flips(seed: int, position: int) -> bool:
  """Whether the example at `position` is mirrored: a coin from a hash of (seed, position)."""
  key = struct.pack("<QQQ", _FLIP_STREAM, seed % 2**64, position)
  return bool(hashlib.blake2b(key, digest_size=1).digest()[0] & 1)


@dataclasses.dataclass(frozen=True)
class Preprocess:
  """(example position, record) -> example (see the module docstring)."""
  image_key: str
  label_key: str  # "" = no labels.
  text_key: str
  image_size: int
  random_flip: bool
  seed: int
  text: TextSpec = TextSpec()

  def __call__(self, item: tuple[int, dict]) -> dict:
    position, record = item
    image = fit_image(np.asarray(record[self.image_key]), self.image_size)
    if self.random_flip and flips(self.seed, position):
      image = image[:, ::-1]
    out = {"image": image.astype(np.float32) / 127.5 - 1.0}
    if self.label_key:
      out["label"] = np.int32(record[self.label_key])
    if self.text.tokenizer is not None:
      caption = record[self.text_key]
      caption = caption.decode() if isinstance(caption, bytes) else str(caption)
      out["tokens"] = self.text.tokenizer.encode([caption])[0]
    if self.text.emb_key:
      emb = np.asarray(record[self.text.emb_key], np.float32)
      out["text_emb"], out["text_mask"] = emb, np.any(emb != 0, axis=-1)
    return out


def stack(examples: list[dict]) -> dict:
  """Examples -> a batch: each feature stacked along a new leading axis."""
  return {k: np.stack([e[k] for e in examples]) for k in examples[0]}
