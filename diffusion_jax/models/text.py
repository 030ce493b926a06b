"""Text conditioning: a small transformer text encoder and U-Net cross-attention.

The U-Net attends from its feature maps to a context of token embeddings, either
encoded here from token ids (trained jointly) or given precomputed (frozen T5/CLIP
embeddings stored with the data). The context always starts with one learned "null"
token, so an empty prompt (the classifier-free guidance branch) still has a key to
attend to.
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

PAD_ID = 0  # Token id 0 pads a prompt; an all-pad prompt is the empty prompt.


class TransformerLayer(nn.Module):
  width: int
  num_heads: int
  dtype: Any

  @nn.compact
  def __call__(self, x, mask):
    attn_mask = nn.make_attention_mask(mask, mask)
    h = nn.LayerNorm(dtype=self.dtype)(x)
    x = x + nn.MultiHeadDotProductAttention(
        num_heads=self.num_heads, dtype=self.dtype)(h, h, mask=attn_mask)
    h = nn.LayerNorm(dtype=self.dtype)(x)
    h = nn.Dense(4 * self.width, dtype=self.dtype)(h)
    return x + nn.Dense(self.width, dtype=self.dtype)(nn.gelu(h))


class TextEncoder(nn.Module):
  """Token ids (B, L) -> embeddings (B, L, width); pre-LN transformer, learned positions."""
  vocab_size: int
  max_len: int
  width: int
  num_layers: int
  num_heads: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, tokens):
    mask = tokens != PAD_ID
    x = nn.Embed(self.vocab_size, self.width, name="token_emb")(tokens)
    pos = self.param("pos_emb", nn.initializers.normal(0.02), (self.max_len, self.width))
    x = (x + pos[None, :tokens.shape[1]]).astype(self.dtype)
    for i in range(self.num_layers):
      x = TransformerLayer(self.width, self.num_heads, self.dtype, name=f"layer_{i}")(x, mask)
    return nn.LayerNorm(dtype=self.dtype, name="ln_final")(x), mask


class Context(nn.Module):
  """The cross-attention context: [null token] + projected text, with its mask,
  and (pooled) a vector of its masked mean for the time embedding, else None."""
  width: int
  emb_dim: int
  dtype: Any
  pooled: bool = True

  @nn.compact
  def __call__(self, text, mask):
    text = nn.Dense(self.width, dtype=self.dtype, name="proj")(text)
    null = self.param("null", nn.initializers.normal(0.02), (1, 1, self.width))
    null = jnp.broadcast_to(null, (text.shape[0], 1, self.width)).astype(text.dtype)
    context = jnp.concatenate([null, text], axis=1)
    mask = jnp.concatenate([jnp.ones((text.shape[0], 1), bool), mask], axis=1)
    if not self.pooled:
      return context, mask, None
    m = mask[..., None].astype(context.dtype)
    pooled = (context * m).sum(1) / m.sum(1)
    return context, mask, nn.Dense(self.emb_dim, dtype=self.dtype, name="pooled")(pooled)


class CrossAttnBlock(nn.Module):
  """Feature maps (queries) attend to the text context (keys, values); zero-init output.

  positions: a learned embedding of each location (zero-initialised) is added to the
  queries, so a location can pick the words about its own place ("on the left") while
  the noisy image does not yet show what stands there.
  """
  num_heads: int
  num_groups: int
  dtype: Any
  positions: bool = False

  @nn.compact
  def __call__(self, x, context, mask):
    b, hgt, wid, c = x.shape
    h = nn.GroupNorm(self.num_groups, dtype=self.dtype)(x).reshape(b, hgt * wid, c)
    if self.positions:
      h = h + self.param("query_pos", nn.initializers.zeros, (hgt * wid, c)).astype(h.dtype)
    attn_mask = nn.make_attention_mask(jnp.ones((b, hgt * wid), bool), mask)
    h = nn.MultiHeadDotProductAttention(
        num_heads=self.num_heads, qkv_features=c, out_features=c, dtype=self.dtype,
        out_kernel_init=nn.initializers.zeros)(h, context, mask=attn_mask)
    return x + h.reshape(b, hgt, wid, c)
