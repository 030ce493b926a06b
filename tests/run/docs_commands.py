"""The `python -m diffusion_jax...` commands of README.md and docs/, and how the tests
run them: in a scratch directory that holds `configs/` (a link to the repository's),
the input files and the folder of images the commands name, and a small `cifar10`
prepared in a local data_dir.
Train commands get the config's `:runlocal` variant where it has one and the shrinking
overrides below, for the fields the command does not set itself.
"""

import os
import re
import shlex

import numpy as np
from PIL import Image

from tests.conftest import ROOT, fmt, run_main
from tests.data.fake_datasets import prepare_cifar10

# Pages in the order their commands run (a page may use a run an earlier one made);
# pages not named here run after, in name order.
ORDER = ["command-line.md", "configs.md", "datasets.md", "conditioning.md",
         "processes-and-samplers.md", "evaluation.md"]
PAGES = ["README.md"] + [f"docs/{p}" for p in ORDER] + sorted(
    f"docs/{p}" for p in os.listdir(os.path.join(ROOT, "docs"))
    if p.endswith(".md") and p not in ORDER)
SHRINK = {
    "train": {"training.num_steps": 2, "training.checkpoint_every": 2, "training.log_every": 1,
              "training.batch_size": 8, "optim.warmup_steps": 1, "model.num_res_blocks": 1,
              "model.attn_resolutions": (), "model.ch": 8, "model.num_groups": 4,
              "model.text_layers": 1,
              "sample.num_samples": 4, "sample.batch_size": 4, "sample.num_steps": 2,
              "eval.num_samples": 80},
    "sample": {"sample.num_samples": 4, "sample.batch_size": 4, "sample.num_steps": 2},
    "eval": {"eval.num_examples": 4, "eval.batch_size": 4, "eval.ode_steps": 2,
             "eval.num_samples": 80, "sample.batch_size": 40},
}
FAKE_DATA_DIR = "/data/tfds"  # The docs' example data_dir, replaced by a local one.


def commands() -> list[tuple[str, list[str]]]:
  """(page, [module, *argv]) of every `python -m diffusion_jax...` in a bash block, in
  order."""
  out = []
  for page in PAGES:
    text = open(os.path.join(ROOT, page)).read()
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
      for line in block.replace("\\\n", " ").splitlines():
        line = line.split(" && ")[-1].strip()
        if line.startswith("python -m diffusion_jax."):
          words = shlex.split(line)
          assert words[2] in RUNNERS, f"{page}: no test runs {words[2]} yet"
          out.append((page, words[2:]))
  return out


def _value(argv, flag):
  for a in argv:
    if a.startswith(f"--{flag}="):
      return a.split("=", 1)[1]
  return None


def _two_levels(spec: str) -> dict:
  """A pixel U-Net of more than two levels cut to its top two (compiling a level costs
  more than training it here); what the config placed on a lower level moves to the
  second."""
  from diffusion_jax.config import files
  c = files.load(spec)
  m, second = c.model, c.data.image_size // 2
  if c.kind != "diffusion" or c.latent.autoencoder or len(m.ch_mult) <= 2:
    return {}
  out = {"model.ch_mult": tuple(m.ch_mult[:2])}
  for field in ("cross_attn_resolutions", "cond_image_resolutions"):
    out[f"model.{field}"] = tuple(sorted({max(r, second) for r in m[field]}, reverse=True))
  return out


def shrunk(argv: list[str], data_dir: str) -> list[str]:
  """The command with a tiny model and run, and the local data_dir (a sweep's trials
  are shrunk as train commands are; --report runs nothing)."""
  argv = [a.replace(FAKE_DATA_DIR, data_dir) for a in argv]
  if "--report" in argv:
    return argv
  mode = _value(argv, "mode") or "train"
  config = _value(argv, "config")
  if mode == "train" and config and ":" not in config:
    has_variant = "runlocal" in open(config).read()
    argv = [f"--config={config}:runlocal" if a == f"--config={config}" and has_variant else a
            for a in argv]
  given = {a.split("=", 1)[0][len("--config."):] for a in argv if a.startswith("--config.")}
  shrink = dict(SHRINK[mode])
  if mode == "train" and config:
    shrink.update(_two_levels(_value(argv, "config")))
  extra = {k: v for k, v in shrink.items() if k not in given}
  if mode == "sample" and _value(argv, "labels"):
    extra.pop("sample.num_samples")
  return argv + [f"--config.{k}={fmt(v)}" for k, v in extra.items()]


def shrunk_reproduce(argv: list[str], data_dir: str) -> list[str]:
  """An entry's re-run is printed, not run (--dry_run): even the --quick digits entry
  trains for minutes (tests/test_reproduce.py runs a tiny entry end to end)."""
  return argv + ["--dry_run"] if argv and not argv[0].startswith("-") else argv


def run_reproduce(argv: list[str]):
  """`python -m diffusion_jax.reproduce ARGV` in this process, its output captured."""
  import contextlib
  import io
  from diffusion_jax import reproduce
  from tests.conftest import Result
  out, err = io.StringIO(), io.StringIO()
  with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    code = reproduce.main(argv)
  return Result(code, out.getvalue(), err.getvalue())



def prepare_inputs(workspace: str) -> None:
  """The files the docs' sampling commands read."""
  rng = np.random.default_rng(0)
  np.savez(os.path.join(workspace, "lowres.npz"),
           lowres=rng.integers(0, 256, (2, 8, 8, 3), dtype=np.uint8))
  np.savez(os.path.join(workspace, "gray.npz"),
           gray=rng.integers(0, 256, (2, 32, 32, 1), dtype=np.uint8))
  holes = os.path.join(workspace, "holes_rgba_pngs")
  os.makedirs(holes)
  for i in range(2):
    rgba = rng.integers(0, 256, (32, 32, 4), dtype=np.uint8)
    rgba[..., 3] = 255
    rgba[8:20, 10:24, 3] = 0
    Image.fromarray(rgba).save(os.path.join(holes, f"{i}.png"))
  for i in range(12):  # docs/datasets.md's folder of images: two classes, any size.
    folder = os.path.join(workspace, "my_images", ("cats", "dogs")[i % 2])
    os.makedirs(folder, exist_ok=True)
    size = (24 + 4 * i, 32 + 2 * i)
    Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(
        os.path.join(folder, f"{i}.{'png' if i % 3 else 'jpg'}"))


def prepare_vae(workspace: str) -> None:
  """docs/latent.md's diffusers model directory: a tiny AutoencoderKL (f = 4, RGB) with
  random weights, in diffusers' layout."""
  import json
  from safetensors.numpy import save_file
  from diffusion_jax.models.autoencoder import AutoencoderConfig
  from tests.models.test_autoencoder import rand_params, to_torch_layout
  cfg = AutoencoderConfig(block_out_channels=(4, 4, 4), layers_per_block=1, norm_num_groups=4)
  folder = os.path.join(workspace, "sd-vae-ft-mse")
  os.makedirs(folder)
  with open(os.path.join(folder, "config.json"), "w") as f:
    json.dump({"_class_name": "AutoencoderKL", "in_channels": 3, "out_channels": 3,
               "block_out_channels": list(cfg.block_out_channels), "layers_per_block": 1,
               "latent_channels": 4, "norm_num_groups": 4, "scaling_factor": 0.18215,
               "down_block_types": ["DownEncoderBlock2D"] * 3,
               "up_block_types": ["UpDecoderBlock2D"] * 3}, f)
  save_file(to_torch_layout(rand_params(cfg)),
            os.path.join(folder, "diffusion_pytorch_model.safetensors"))


def _captured(fn, argv: list[str]):
  """fn(argv) -> exit status, in this process, its output captured."""
  import contextlib
  import io
  from tests.conftest import Result
  out, err = io.StringIO(), io.StringIO()
  with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    code = fn(argv)
  return Result(code, out.getvalue(), err.getvalue())


def run_convert_vae(argv: list[str]):
  from diffusion_jax.models import convert_vae
  return _captured(convert_vae.main, argv)


def run_latent_scale(argv: list[str]):
  from diffusion_jax.run import latent_scale
  return _captured(latent_scale.run, ["diffusion_jax.run.latent_scale", *argv])


def shrunk_scale(argv: list[str], data_dir: str) -> list[str]:
  """The config's :runlocal variant (a tiny dataset) and one small batch."""
  argv = [f"{a}:runlocal" if a.startswith("--config=") and ":" not in a else a for a in argv]
  return argv + ["--config.latent.scale_batches=1", "--config.training.batch_size=8"]


def run_latent_cache(argv: list[str]):
  from diffusion_jax.run import latent_cache
  return _captured(latent_cache.run, ["diffusion_jax.run.latent_cache", *argv])


def run_sweep(argv: list[str]):
  """`python -m diffusion_jax.sweep ARGV` in this process, its output captured."""
  import contextlib
  import io

  from diffusion_jax.sweep import cli
  from tests.conftest import Result
  out, err = io.StringIO(), io.StringIO()
  with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    code = cli.run(["diffusion_jax.sweep", *argv])
  return Result(code, out.getvalue(), err.getvalue())


# Module -> (how to shrink its argv, how to run it).
RUNNERS = {
    "diffusion_jax.main": (shrunk, run_main),
    "diffusion_jax.reproduce": (shrunk_reproduce, run_reproduce),
    "diffusion_jax.sweep": (shrunk, run_sweep),
    "diffusion_jax.models.convert_vae": (lambda argv, data_dir: argv, run_convert_vae),
    "diffusion_jax.run.latent_scale": (shrunk_scale, run_latent_scale),
    # The :runlocal data the documented latent runs train on; encoded 8 at a time.
    "diffusion_jax.run.latent_cache": (shrunk_scale, run_latent_cache),
}


def run_all(workspace: str) -> list[tuple[str, list[str], object]]:
  """Runs every documented command in order in `workspace`: (page, argv, result)."""
  os.symlink(os.path.join(ROOT, "configs"), os.path.join(workspace, "configs"))
  prepare_inputs(workspace)
  prepare_vae(workspace)
  cifar_dir = os.path.join(workspace, "tfds")
  prepare_cifar10(cifar_dir)
  results = []
  cwd = os.getcwd()
  os.chdir(workspace)
  try:
    for page, (module, *argv) in commands():
      shrink, runner = RUNNERS[module]
      results.append((page, argv, runner(shrink(argv, cifar_dir))))
  finally:
    os.chdir(cwd)
  return results
