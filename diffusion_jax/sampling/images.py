"""The files of a sample set: `samples/step_<step>.npz` (images uint8 N x H x W x C and
the conditions used) and `samples/step_<step>.png` (a grid: one row per class, or one
row per sample with its conditions beside it). Existing files are never overwritten:
a second set at the same step gets a `-1`, `-2`, ... suffix.
"""

import io

import numpy as np
from etils import epath
from PIL import Image, ImageDraw


def grid(images: np.ndarray, labels: np.ndarray, num_classes: int, max_cols: int = 16,
         min_size: int = 32) -> np.ndarray:
  """One row per class (a single row if unconditional), upscaled to >= min_size px."""
  rows = range(num_classes) if num_classes else [0]
  n, h, w, c = images.shape
  cells = [images[labels == r][:max_cols] if num_classes else images[:max_cols] for r in rows]
  cols = max(1, max(len(x) for x in cells))
  pad = 1
  canvas = np.zeros((len(cells) * (h + pad) + pad, cols * (w + pad) + pad, c), np.uint8)
  for r, row in enumerate(cells):
    for j, img in enumerate(row):
      y, x = pad + r * (h + pad), pad + j * (w + pad)
      canvas[y:y + h, x:x + w] = img
  scale = max(1, -(-min_size // h))
  return canvas.repeat(scale, 0).repeat(scale, 1)


def _free_stem(directory: epath.Path, stem: str) -> str:
  candidate, k = stem, 0
  while any((directory / (candidate + ext)).exists() for ext in (".npz", ".png")):
    k += 1
    candidate = f"{stem}-{k}"
  return str(directory / candidate)


def as_rgb(x: np.ndarray, size: int) -> np.ndarray:
  """uint8 (N, h, w, c) -> (N, size, size, 3), nearest-upscaled, gray repeated."""
  x = x.repeat(size // x.shape[1], 1).repeat(size // x.shape[2], 2)
  return x.repeat(3, -1) if x.shape[-1] == 1 else x[..., :3]


PANEL_KEYS = ("lowres", "gray", "masked")  # Conditions drawn left of each result.


def panel_grid(images: np.ndarray, record: dict, max_rows: int = 16,
               min_size: int = 64) -> np.ndarray:
  """One row per sample: its image conditions, the result, the reference (if any)
  and its prompt (if any), upscaled to >= min_size px."""
  n, h = images.shape[0], images.shape[1]
  cols = [as_rgb(record[k], h) for k in PANEL_KEYS if k in record]
  cols.append(as_rgb(images, h))
  if "reference" in record:
    cols.append(as_rgb(record["reference"], h))
  rows = min(n, max_rows)
  scale = max(1, -(-min_size // h))
  pad, cell = 2, h * scale
  prompts = record.get("prompts")
  text_w = 8 * max((len(str(p)) for p in prompts[:rows]), default=0) if prompts is not None else 0
  canvas = np.zeros((rows * (cell + pad) + pad, len(cols) * (cell + pad) + pad + text_w, 3),
                    np.uint8)
  for r in range(rows):
    for j, col in enumerate(cols):
      y, x = pad + r * (cell + pad), pad + j * (cell + pad)
      canvas[y:y + cell, x:x + cell] = col[r].repeat(scale, 0).repeat(scale, 1)
  img = Image.fromarray(canvas)
  if prompts is not None:
    draw = ImageDraw.Draw(img)
    for r in range(rows):
      draw.text((len(cols) * (cell + pad) + pad, pad + r * (cell + pad) + cell // 2 - 5),
                str(prompts[r]), fill=(255, 255, 255))
  return np.asarray(img)


def write_samples(workdir: str, step: int, images: np.ndarray, record: dict,
                  num_classes: int) -> str:
  """Writes the .npz (images and the conditions used) and the .png grid; returns
  the .npz path. Class-only sets get one grid row per class, others one row per
  sample with its conditions beside it."""
  directory = epath.Path(workdir) / "samples"
  directory.mkdir(parents=True, exist_ok=True)
  stem = _free_stem(directory, f"step_{step}")
  extra = {k: v for k, v in record.items() if k != "count"}
  if "labels" in extra:
    extra["labels"] = extra["labels"].astype(np.int64)
  npz = io.BytesIO()
  np.savez(npz, images=images, **extra)
  epath.Path(stem + ".npz").write_bytes(npz.getvalue())
  if set(extra) <= {"labels"}:
    labels = extra.get("labels", np.zeros(len(images), np.int64))
    g = grid(images, labels, num_classes)
  else:
    g = panel_grid(images, extra)
  png = io.BytesIO()
  Image.fromarray(g[..., 0] if g.shape[-1] == 1 else g).save(png, format="PNG")
  epath.Path(stem + ".png").write_bytes(png.getvalue())
  return stem + ".npz"
