"""Word-level tokenizer built from a dataset's captions.

Lower-cased words split on whitespace; id 0 is padding, words are 1..V in sorted
order, so a vocabulary is a plain list saved with every checkpoint. Unknown words are
an error, never silently mapped: a prompt the model has no embedding for would be
sampled as something else.
"""

from typing import Iterable, Sequence

import numpy as np

from diffusion_jax.models.text import PAD_ID


class TokenizerError(ValueError):
  """A prompt that cannot be tokenized: unknown words or too many of them."""


def words(text: str) -> list[str]:
  return text.lower().split()


def build_vocab(captions: Iterable[str]) -> list[str]:
  return sorted({w for c in captions for w in words(c)})


class Tokenizer:

  def __init__(self, vocab: Sequence[str], max_len: int):
    self.vocab = list(vocab)
    self.max_len = max_len
    self._ids = {w: i + 1 for i, w in enumerate(self.vocab)}  # 0 is PAD_ID.
    assert PAD_ID == 0

  @property
  def vocab_size(self) -> int:
    """Embedding rows needed: the words plus padding."""
    return len(self.vocab) + 1

  def encode(self, prompts: Sequence[str]) -> np.ndarray:
    """(N, max_len) int32 ids, zero-padded; "" is the empty prompt (all padding)."""
    out = np.zeros((len(prompts), self.max_len), np.int32)
    for i, p in enumerate(prompts):
      ws = words(p)
      unknown = sorted({w for w in ws if w not in self._ids})
      if unknown:
        raise TokenizerError(f"prompt {p!r} has words outside the model's vocabulary: "
                             f"{unknown} (vocabulary: {' '.join(self.vocab)})")
      if len(ws) > self.max_len:
        raise TokenizerError(f"prompt {p!r} has {len(ws)} words; the model takes at most "
                             f"{self.max_len} (model.text_max_len)")
      out[i, :len(ws)] = [self._ids[w] for w in ws]
    return out

  def decode(self, ids: np.ndarray) -> list[str]:
    return [" ".join(self.vocab[i - 1] for i in row if i != PAD_ID) for row in np.asarray(ids)]
