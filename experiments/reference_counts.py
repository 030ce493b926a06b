"""Parameter counts of the papers' networks behind the large configs, layer by layer as
their constructors build them (guided-diffusion's UNetModel for ADM, EDM2's
networks_edm2.UNet); neither is run or needed.

  python experiments/reference_counts.py

The EDM2 counts of all six sizes reproduce EDM2's Table 2 (125M ... 1523M), which is
the check on the method.
"""


def adm_resblock(cin: int, cout: int, emb: int) -> int:
  """ADM's ResBlock with scale-shift norm: two GroupNorm + 3x3 conv, the embedding's
  linear to 2 cout, and a 1x1 skip where the width changes (resampling keeps it)."""
  n = 2 * cin + 9 * cin * cout + cout + emb * 2 * cout + 2 * cout
  n += 2 * cout + 9 * cout * cout + cout
  return n + (cin * cout + cout if cin != cout else 0)


def adm_attention(c: int) -> int:
  return 2 * c + 3 * c * c + 3 * c + c * c + c  # GroupNorm, qkv, proj_out.


def adm_unet(ch: int = 192, mult=(1, 2, 3, 4), blocks: int = 3, attn_ds=(2, 4, 8),
             in_ch: int = 3, out_ch: int = 6, classes: int = 1000) -> int:
  """ADM's ImageNet-64 flags by default (attention at downsampling 2, 4, 8: 32, 16, 8 px;
  learn_sigma: 6 output channels; resblock_updown)."""
  emb = 4 * ch
  n = ch * emb + emb + emb * emb + emb + classes * emb + 9 * in_ch * ch + ch
  widths, c, ds = [ch], ch, 1
  for level, m in enumerate(mult):
    for _ in range(blocks):
      n += adm_resblock(c, m * ch, emb) + (adm_attention(m * ch) if ds in attn_ds else 0)
      c = m * ch
      widths.append(c)
    if level != len(mult) - 1:
      n += adm_resblock(c, c, emb)
      widths.append(c)
      ds *= 2
  n += 2 * adm_resblock(c, c, emb) + adm_attention(c)
  for level, m in reversed(list(enumerate(mult))):
    for i in range(blocks + 1):
      n += adm_resblock(c + widths.pop(), m * ch, emb)
      c = m * ch
      n += adm_attention(c) if ds in attn_ds else 0
      if level and i == blocks:
        n += adm_resblock(c, c, emb)
        ds //= 2
  return n + 2 * c + 9 * c * out_ch + out_ch


def edm2_block(cin: int, cout: int, emb: int, encoder: bool, attention: bool) -> int:
  """EDM2's Block: no biases; an encoder block's 1x1 skip comes first (its 3x3 convs see
  cout channels); a scalar embedding gain."""
  n = 1 + 9 * (cout if encoder else cin) * cout + emb * cout + 9 * cout * cout
  n += cin * cout if cin != cout else 0
  return n + (4 * cout * cout if attention else 0)


def edm2_unet(ch: int, img_channels: int = 4, res: int = 64, classes: int = 1000,
              mult=(1, 2, 3, 4), blocks: int = 3, attn=(16, 8)) -> int:
  """EDM2's UNet on ImageNet-512 latents (64x64x4), C = ch."""
  widths = [ch * m for m in mult]
  emb = max(widths)
  n = 1 + widths[0] * emb + classes * emb  # Output gain, noise and label embeddings.
  skips, c = [], img_channels + 1  # A constant channel is appended to the input.
  for level, w in enumerate(widths):
    if level == 0:
      n += 9 * c * w
      c = w
    else:
      n += edm2_block(c, c, emb, True, False)
    skips.append(c)
    for _ in range(blocks):
      n += edm2_block(c, w, emb, True, (res >> level) in attn)
      c = w
      skips.append(c)
  for level, w in reversed(list(enumerate(widths))):
    if level == len(widths) - 1:
      n += edm2_block(c, c, emb, False, True) + edm2_block(c, c, emb, False, False)
    else:
      n += edm2_block(c, c, emb, False, False)
    for _ in range(blocks + 1):
      n += edm2_block(c + skips.pop(), w, emb, False, (res >> level) in attn)
      c = w
  return n + 9 * c * img_channels


def main():
  print(f"ADM ImageNet-64 (guided-diffusion UNetModel): {adm_unet():,}")
  for name, ch in (("XS", 128), ("S", 192), ("M", 256), ("L", 320), ("XL", 384), ("XXL", 448)):
    print(f"EDM2-{name} UNet (C = {ch}): {edm2_unet(ch):,}")


if __name__ == "__main__":
  main()
