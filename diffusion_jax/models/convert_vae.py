"""diffusers' AutoencoderKL weights (Stable Diffusion's VAE) -> this library's Flax VAE.

  python -m diffusion_jax.models.convert_vae --src=DIR --dst=vae.npz
  python -m diffusion_jax.models.convert_vae --src=vae.safetensors --config=config.json \\
      --dst=vae.npz

--src is a diffusers model directory (config.json and diffusion_pytorch_model.safetensors
or .bin), or a single .safetensors / .bin / .pt file given with its --config. The
.safetensors files are read by the safetensors package without torch; .bin and .pt
need torch. Both are imported only here, only when such a file is read.

The output .npz holds the float32 parameters under "params/<flax path>" and the
`AutoencoderConfig` as JSON under "config"; `load` reads it with numpy alone.

Names: a Flax path is the diffusers module path with ".N" written "_N", so the map is
mechanical; conv kernels go from OIHW to HWIO, linear weights are transposed, and
GroupNorm's weight is Flax's scale. Checkpoints saved before diffusers 0.14 name the
attention projections query/key/value/proj_attn instead of to_q/to_k/to_v/to_out.0;
both are read.
"""

import argparse
import dataclasses
import json
import os
import re
import sys
import zipfile
from typing import Any, Mapping

import flax
import numpy as np

from diffusion_jax.models import autoencoder
from diffusion_jax.models.autoencoder import AutoencoderConfig

WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
_LEAVES = {"kernel": "weight", "scale": "weight", "bias": "bias"}
_OLD_ATTENTION_NAMES = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
# diffusers config keys with no bearing on the weights or the computation here.
_IGNORED_KEYS = ("_class_name", "_diffusers_version", "_name_or_path", "sample_size",
                 "force_upcast")


class ConversionError(ValueError):
  """A weight or config file that does not describe this VAE (one-line message)."""


# --- diffusers config -> AutoencoderConfig.

def config_from_diffusers(d: Mapping[str, Any]) -> AutoencoderConfig:
  """The AutoencoderConfig of a diffusers AutoencoderKL config.json."""
  d = dict(d)
  cls = d.get("_class_name", "AutoencoderKL")
  if cls != "AutoencoderKL":
    raise ConversionError(f"config is a {cls}, not an AutoencoderKL")
  for key in _IGNORED_KEYS:
    d.pop(key, None)
  n = len(d.get("block_out_channels", AutoencoderConfig.block_out_channels))
  for key, block in (("down_block_types", "DownEncoderBlock2D"),
                     ("up_block_types", "UpDecoderBlock2D")):
    types = list(d.pop(key, [block] * n))
    if types != [block] * n:
      raise ConversionError(f"{key}={types}: only {n} x {block} is supported")
  if d.pop("act_fn", "silu") != "silu":
    raise ConversionError("only act_fn='silu' is supported")
  for key in ("latents_mean", "latents_std"):
    if d.pop(key, None) is not None:
      raise ConversionError(f"per-channel {key} is not supported (only scaling/shift_factor)")
  if d.get("shift_factor", 0.0) is None:
    d["shift_factor"] = 0.0
  try:
    return AutoencoderConfig.from_config(d)
  except ValueError as e:
    raise ConversionError(f"config: {e}") from None


# --- Reading weight files.

def read_state_dict(path: str) -> dict[str, np.ndarray]:
  """Tensors of a .safetensors (no torch needed) or torch .bin / .pt / .ckpt file, as
  float32 numpy arrays."""
  if not os.path.isfile(path):
    raise ConversionError(f"{path}: no such file")
  if path.endswith(".safetensors"):
    try:
      # The flax backend also reads bfloat16, which numpy's cannot.
      from safetensors.flax import load_file
    except ImportError:
      raise ConversionError("reading .safetensors needs the safetensors package "
                            "(pip install safetensors)") from None
    try:
      tensors = load_file(path)
    except Exception as e:  # safetensors raises its own error types.
      raise ConversionError(f"{path}: not a readable safetensors file ({e})") from None
    return {k: np.asarray(v, np.float32) for k, v in tensors.items()}
  try:
    import torch
  except ImportError:
    raise ConversionError(f"{path}: reading torch files needs torch; a .safetensors "
                          "file needs only the safetensors package") from None
  try:
    state = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # Pickle and zip errors of every kind.
    raise ConversionError(f"{path}: not a readable torch file ({e})") from None
  if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
    state = state["state_dict"]  # A Lightning checkpoint.
  if not isinstance(state, dict):
    raise ConversionError(f"{path}: holds a {type(state).__name__}, not a state dict")
  return {k: v.detach().float().numpy() for k, v in state.items() if torch.is_tensor(v)}


def read_source(src: str, config_path: str | None = None
                ) -> tuple[AutoencoderConfig, dict[str, np.ndarray]]:
  """(config, tensors) of a diffusers model directory, or of a single weight file with
  the config.json at `config_path`."""
  if os.path.isdir(src):
    config_path = config_path or os.path.join(src, "config.json")
    found = [os.path.join(src, f) for f in WEIGHT_FILES if os.path.isfile(os.path.join(src, f))]
    if not found:
      raise ConversionError(f"{src}: has none of {list(WEIGHT_FILES)}")
    weights = found[0]  # .safetensors first: it needs no torch.
  else:
    weights = src
    if not config_path:
      raise ConversionError(f"{src}: a single weight file needs --config=config.json")
  try:
    with open(config_path) as f:
      d = json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise ConversionError(f"{config_path}: cannot read the config ({e})") from None
  return config_from_diffusers(d), read_state_dict(weights)


# --- The name and layout map.

def torch_name(path: tuple[str, ...]) -> str:
  """diffusers' state-dict key of a Flax parameter path."""
  modules = [re.sub(r"_(\d+)$", r".\1", p) for p in path[:-1]]
  return ".".join(modules + [_LEAVES[path[-1]]])


def _names(name: str) -> list[str]:
  """`name` and its pre-0.14 attention spelling, if any."""
  for new, old in _OLD_ATTENTION_NAMES.items():
    if f".{new}." in name:
      return [name, name.replace(f".{new}.", f".{old}.")]
  return [name]


def torch_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
  """The torch layout of a Flax parameter shape (HWIO -> OIHW, (in, out) -> (out, in))."""
  if len(shape) == 4:
    return (shape[3], shape[2], shape[0], shape[1])
  return tuple(shape[::-1])


def to_flax(t: np.ndarray, shape: tuple[int, ...]) -> np.ndarray | None:
  """A torch tensor in the Flax layout of `shape`, or None if it cannot be."""
  t = np.asarray(t, np.float32)
  if len(shape) == 4 and t.ndim == 4:
    t = t.transpose(2, 3, 1, 0)
  elif len(shape) == 2:
    if t.ndim == 4 and t.shape[2:] == (1, 1):
      t = t[:, :, 0, 0]  # Some exports keep the attention projections as 1x1 convs.
    t = t.T
  return t if t.shape == tuple(shape) else None


def _unflatten(flat: dict[tuple[str, ...], np.ndarray]) -> dict:
  return flax.traverse_util.unflatten_dict(flat)


def _tensor_order(path: tuple[str, ...]):
  # By module, a module's weight before its bias: the tensor named in an error is then
  # the first of the first module that does not fit.
  return path[:-1], path[-1] == "bias"


def convert_state_dict(state: Mapping[str, np.ndarray], cfg: AutoencoderConfig,
                       source: str = "weights") -> dict:
  """The Flax parameter tree of a diffusers AutoencoderKL state dict.

  Raises ConversionError naming the first missing or mis-shaped tensor (in the
  order of `_tensor_order`), or the first tensor the config has no place for.
  """
  expected = flax.traverse_util.flatten_dict(autoencoder.param_shapes(cfg))
  params, used = {}, set()
  for path in sorted(expected, key=_tensor_order):
    shape = tuple(expected[path].shape)
    name = torch_name(path)
    present = [n for n in _names(name) if n in state]
    if not present:
      example = f", e.g. {sorted(state)[0]!r}" if state else ""
      raise ConversionError(
          f"{source}: not an AutoencoderKL of this config: missing tensor {name!r} "
          f"(shape {torch_shape(shape)}); the file has {len(state)} tensors{example}")
    value = to_flax(state[present[0]], shape)
    if value is None:
      raise ConversionError(
          f"{source}: tensor {present[0]!r} has shape {tuple(np.shape(state[present[0]]))}, "
          f"expected {torch_shape(shape)} for this config")
    params[path] = value
    used.add(present[0])
  extra = sorted(set(state) - used)
  if extra:
    raise ConversionError(
        f"{source}: unexpected tensor {extra[0]!r} ({len(extra)} unused in all): the "
        "config does not describe this checkpoint")
  return _unflatten(params)


def check_params(params, cfg: AutoencoderConfig, source: str = "params") -> None:
  """ConversionError naming the first missing, mis-shaped or unknown parameter."""
  expected = flax.traverse_util.flatten_dict(autoencoder.param_shapes(cfg))
  got = flax.traverse_util.flatten_dict(params)
  for path in sorted(expected, key=_tensor_order):
    if path not in got:
      raise ConversionError(f"{source}: missing parameter {'/'.join(path)}")
    if tuple(np.shape(got[path])) != tuple(expected[path].shape):
      raise ConversionError(f"{source}: parameter {'/'.join(path)} has shape "
                            f"{tuple(np.shape(got[path]))}, expected {expected[path].shape}")
  extra = sorted(set(got) - set(expected))
  if extra:
    raise ConversionError(f"{source}: unknown parameter {'/'.join(extra[0])}")


# --- The converted file.

def save(path: str, cfg: AutoencoderConfig, params) -> None:
  flat = flax.traverse_util.flatten_dict(params)
  arrays = {"params/" + "/".join(k): np.asarray(v, np.float32) for k, v in flat.items()}
  with open(path, "wb") as f:  # A file object: np.savez would append ".npz" to the name.
    np.savez(f, config=np.array(json.dumps(dataclasses.asdict(cfg))), **arrays)


def load(path: str) -> tuple[AutoencoderConfig, dict]:
  """(config, params) of a converted file, with numpy alone (float32 numpy arrays)."""
  try:
    with np.load(path, allow_pickle=False) as f:
      cfg = AutoencoderConfig.from_config(json.loads(str(f["config"])))
      flat = {tuple(k.split("/")[1:]): f[k] for k in f.files if k.startswith("params/")}
  except (OSError, KeyError, ValueError, zipfile.BadZipFile) as e:
    raise ConversionError(f"{path}: not a converted VAE file ({e})") from None
  params = _unflatten(flat)
  check_params(params, cfg, path)
  return cfg, params


def convert(src: str, dst: str, config_path: str | None = None) -> AutoencoderConfig:
  cfg, state = read_source(src, config_path)
  params = convert_state_dict(state, cfg, src)
  save(dst, cfg, params)
  return cfg


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--src", required=True,
                      help="diffusers AutoencoderKL directory, or one .safetensors/.bin file")
  parser.add_argument("--config", default=None, help="config.json (for a single weight file)")
  parser.add_argument("--dst", required=True, help="output .npz")
  args = parser.parse_args(argv)
  try:
    cfg = convert(args.src, args.dst, args.config)
  except ConversionError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  n = autoencoder.count_params(autoencoder.param_shapes(cfg))
  print(f"wrote {args.dst}: {n:,} parameters, f={cfg.factor}, "
        f"{cfg.latent_channels} latent channels, scaling_factor={cfg.scaling_factor}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
