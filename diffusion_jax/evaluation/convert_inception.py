"""Converts pytorch-fid's FID Inception weights (.pth) to the .npz that inception.py reads.

  python -m diffusion_jax.evaluation.convert_inception \\
      --src=pt_inception-2015-12-05-6726825d.pth --dst=inception_fid.npz

The .pth is pytorch-fid's release file (inception.PT_WEIGHTS_URL), downloaded by hand:
nothing is fetched here. Only this step imports torch; everything else reads the .npz
with numpy. The .npz holds float32 arrays under Flax names ("params/Mixed_5b/branch1x1/
conv/kernel", "batch_stats/.../bn/mean") and, under "__sha256__", the weights' content
hash (inception.weights_hash), which is printed and keys reference statistics.
"""

import argparse
import hashlib
import os
import re
import sys
from typing import Mapping, Optional

import numpy as np

from diffusion_jax.evaluation import inception

# torch BatchNorm / Linear / Conv2d names -> (collection, Flax name).
_LEAF = {
    "conv.weight": ("params", "conv/kernel"),
    "bn.weight": ("params", "bn/scale"),
    "bn.bias": ("params", "bn/bias"),
    "bn.running_mean": ("batch_stats", "bn/mean"),
    "bn.running_var": ("batch_stats", "bn/var"),
}
# BatchNorm's update counter: training state, not needed for inference.
_IGNORED_SUFFIX = ".num_batches_tracked"


def flax_name(torch_name: str) -> Optional[str]:
  """"Mixed_5b.branch1x1.conv.weight" -> "params/Mixed_5b/branch1x1/conv/kernel", or None."""
  if torch_name == "fc.weight":
    return "params/fc/kernel"
  if torch_name == "fc.bias":
    return "params/fc/bias"
  for suffix, (collection, leaf) in _LEAF.items():
    if torch_name.endswith("." + suffix):
      layer = torch_name[:-len(suffix) - 1].replace(".", "/")
      return f"{collection}/{layer}/{leaf}"
  return None


def _to_flax_layout(torch_name: str, a: np.ndarray) -> np.ndarray:
  if torch_name.endswith("conv.weight"):
    return a.transpose(2, 3, 1, 0)  # OIHW -> HWIO.
  if torch_name == "fc.weight":
    return a.T  # (out, in) -> (in, out).
  return a


def _torch_shape(torch_name: str, flax_shape: tuple[int, ...]) -> tuple[int, ...]:
  if torch_name.endswith("conv.weight"):
    h, w, i, o = flax_shape
    return (o, i, h, w)
  if torch_name == "fc.weight":
    return tuple(reversed(flax_shape))
  return flax_shape


def convert_state_dict(state_dict: Mapping[str, np.ndarray],
                       source: str = "state dict") -> dict[str, np.ndarray]:
  """pytorch-fid FID Inception state dict (numpy arrays) -> flat Flax float32 arrays.

  Raises ValueError naming the layer on an unknown, missing or misshapen tensor.
  """
  want = inception.expected_shapes()
  flat = {}
  for name, value in state_dict.items():
    if name.endswith(_IGNORED_SUFFIX):
      continue
    key = flax_name(name)
    if key is None or key not in want:
      raise ValueError(f"{source}: tensor {name} is not a layer of the FID Inception")
    a = np.asarray(value)
    expected = _torch_shape(name, want[key])
    if tuple(a.shape) != expected:
      raise ValueError(f"{source}: layer {name} has shape {tuple(a.shape)}, "
                       f"the FID Inception expects {expected}")
    flat[key] = np.ascontiguousarray(_to_flax_layout(name, a), dtype=np.float32)
  missing = sorted(set(want) - set(flat))
  if missing:
    raise ValueError(f"{source}: {len(missing)} layers of the FID Inception missing, "
                     f"e.g. {missing[:3]}")
  return flat


def save_npz(flat: Mapping[str, np.ndarray], dst: str) -> str:
  """Writes the arrays and their content hash to dst (atomically); returns the hash."""
  digest = inception.weights_hash(flat)
  tmp = dst + ".tmp"
  with open(tmp, "wb") as f:  # A file object: np.savez would append ".npz" to a name.
    np.savez(f, **flat, **{inception.HASH_KEY: np.array(digest)})
  os.replace(tmp, dst)
  return digest


def _check_file_hash(src: str) -> None:
  """torch.hub names files "<name>-<first hex digits of their SHA-256>.pth": check it."""
  m = re.search(r"-([0-9a-f]{8,64})\.pth$", os.path.basename(src))
  if not m:
    return
  h = hashlib.sha256()
  with open(src, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      h.update(chunk)
  if not h.hexdigest().startswith(m.group(1)):
    raise ValueError(f"{src}: SHA-256 {h.hexdigest()[:12]} does not match the {m.group(1)} "
                     f"in its name: a damaged or partial download of {inception.PT_WEIGHTS_URL}? "
                     "(rename the file to skip this check)")


def load_torch_state_dict(src: str) -> dict[str, np.ndarray]:
  """Reads a .pth state dict as numpy arrays (imports torch)."""
  if not os.path.exists(src):
    raise FileNotFoundError(f"{src} not found: download {inception.PT_WEIGHTS_URL} "
                            "(pytorch-fid's FID Inception weights) and pass its path as --src")
  _check_file_hash(src)
  try:
    import torch  # Lazily: only conversion needs it.
  except ImportError as e:
    raise ImportError("converting the .pth needs PyTorch: pip install torch") from e
  state = torch.load(src, map_location="cpu", weights_only=True)
  if not isinstance(state, Mapping):
    raise ValueError(f"{src}: expected a state dict, got {type(state).__name__}")
  return {k: v.detach().numpy() for k, v in state.items()}


def convert(src: str, dst: str) -> str:
  """Converts src (.pth) to dst (.npz); returns the weights' content hash."""
  return save_npz(convert_state_dict(load_torch_state_dict(src), src), dst)


def main(argv: Optional[list[str]] = None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--src", default=inception.PT_WEIGHTS_NAME, help="pytorch-fid's .pth")
  p.add_argument("--dst", default="inception_fid.npz", help="the .npz to write")
  args = p.parse_args(argv)
  try:
    digest = convert(args.src, args.dst)
  except (FileNotFoundError, ValueError, ImportError) as e:
    sys.exit(f"error: {e}")
  print(f"wrote {args.dst} ({inception.count_params():,} parameters), sha256 {digest}")


if __name__ == "__main__":
  main()
