"""The pod-sized configs (ADM ImageNet-64, EDM2-S, EDM2-XL): they pass the run's config
checks on their topology's device count, their U-Nets have the papers' sizes, and each
device's share of the train state under their mesh.fsdp. Shapes only (jax.eval_shape):
nothing is allocated or compiled. The latent configs' U-Nets are built on the latent
shape of SD's VAE (the VAE's weights are not shipped, so run/build.py cannot load it)."""

import json
import os
import re

import pytest

from diffusion_jax import config as config_lib
from diffusion_jax.models.autoencoder import AutoencoderConfig
from experiments import large_configs, reference_counts
from tests.conftest import ROOT
from tests.data.fake_datasets import prepare_imagenet_resized

# Config, chips of the topology its docstring names, the paper's published count, and
# its network counted from its constructor (experiments/reference_counts.py). Published
# counts are rounded (ADM: 296M; EDM2's Table 2: Mparams); the differences of
# architecture each config lists move the count by less than 1% (TOLERANCE).
LARGE = [
    ("imagenet64_adm.py", 64, 296_000_000, reference_counts.adm_unet()),
    ("imagenet512_edm2_s.py", 64, 280_000_000, reference_counts.edm2_unet(192)),
    ("imagenet512_edm2_xl.py", 64, 1_119_000_000, reference_counts.edm2_unet(384)),
]
TOLERANCE = 0.01
IDS = [c[0] for c in LARGE]


def stated(text: str, label: str) -> int:
  """The integer that follows `label` in a docstring or doc ("Parameters: 1,234")."""
  m = re.search(re.escape(label) + r"\s*([\d,]+)", text)
  assert m, f"no {label!r} in the text"
  return int(m.group(1).replace(",", ""))


def test_the_reference_counts_give_the_papers_published_sizes():
  # The check on experiments/reference_counts.py: EDM2's Table 2 (all six sizes) and
  # ADM's 296M, to the published digits.
  table2 = {128: 125, 192: 280, 256: 498, 320: 777, 384: 1119, 448: 1523}
  assert {c: round(reference_counts.edm2_unet(c) / 1e6) for c in table2} == table2
  assert round(reference_counts.adm_unet() / 1e6) == 296


@pytest.mark.parametrize("name,devices,paper,counted", LARGE, ids=IDS)
def test_large_config_has_the_papers_size_and_its_stated_state_per_device(name, devices, paper,
                                                                        counted):
  assert large_configs.CONFIGS[name][1] == devices
  row = large_configs.state_row(name)  # The run's config checks on `devices`, then shapes.
  n = row["parameters"]
  with open(os.path.join(ROOT, "configs", name)) as f:
    assert n == stated(f.read(), "Parameters:"), "the docstring states another count"
  assert abs(n - paper) <= TOLERANCE * paper, (n, paper)
  assert abs(n - counted) <= TOLERANCE * counted, (n, counted)
  # Each device's share of the parameters, their EMA and Adam's moments: about
  # 1/fsdp of the whole (the small arrays the rule leaves replicated are below 1%).
  whole, per_device = 16 * n / 1e9, row["per_device_gb"]
  assert whole / row["fsdp"] - 0.001 <= per_device <= 1.01 * whole / row["fsdp"], row
  # experiments/README.md's table (its recorded output) and docs/configs.md say the same.
  with open(os.path.join(ROOT, "experiments", "results", "large_configs_state.jsonl")) as f:
    assert row in [json.loads(line) for line in f], "the recorded output differs"
  with open(os.path.join(ROOT, "docs", "configs.md")) as f:
    docs = f.read().split("## Large configs (pods)")[1]
  cells = next(line for line in docs.splitlines() if line.startswith(f"| `configs/{name}`"))
  cells = [c.strip() for c in cells.strip("|").split("|")]
  assert int(cells[1].replace(",", "")) == n and cells[4] == f"{per_device:.2f} GB", cells
  print(f"{name}: {n:,} parameters ({100 * (n - paper) / paper:+.2f}% of {paper:,}, "
        f"{100 * (n - counted) / counted:+.2f}% of the paper's network, {counted:,}); "
        f"state {whole:.2f} GB, {per_device:.3f} GB per device with mesh.fsdp={row['fsdp']}")


def test_edm2_configs_name_sds_latent_shape():
  # The shape the registry's parameter counts give count_params (--latent_shape).
  edm2 = config_lib.import_sibling(os.path.join(ROOT, "configs", "imagenet512_edm2_s.py"),
                                    "_edm2.py")
  vae = AutoencoderConfig()
  assert edm2.LATENT_SHAPE == (512 // vae.factor, 512 // vae.factor, vae.latent_channels)


def test_adm_differs_from_guided_diffusions_network_by_the_layers_its_docstring_lists():
  # Resampling blocks' 1x1 skips (3 down: 192, 384, 576 channels; 3 up: 768, 576, 384),
  # a null label row of 768, 3 output channels instead of ADM's 6 (192 x 9 x 3 + 3).
  skips = sum(c * c + c for c in (192, 384, 576, 768, 576, 384))
  with open(os.path.join(ROOT, "configs", "imagenet64_adm.py")) as f:
    doc = f.read()
  assert stated(doc, "Parameters:") == (reference_counts.adm_unet() + skips + 768
                                        - (192 * 9 * 3 + 3))
  assert stated(doc, "these flags has") == reference_counts.adm_unet()
  assert f"+ {skips:,} (the 1x1 skips" in doc


def test_adm_data_reads_imagenet_64(tmp_path):
  from diffusion_jax.data import pipeline
  prepare_imagenet_resized(str(tmp_path))
  d = large_configs.load("imagenet64_adm.py").data
  d.data_dir = str(tmp_path)
  d.read_threads = 0
  pipeline.check(d, {"data.split": (d.split, 4)})
  batch = next(pipeline.make_iterator(d, 4, seed=0))
  assert batch["image"].shape == (4, 64, 64, 3) and batch["label"].shape == (4,)
  assert set(batch["label"]) <= set(range(992, 1000))  # The fake's labels: 999 - i.


@pytest.mark.parametrize("name", ["imagenet512_edm2_s.py", "imagenet64_adm.py"])
def test_imagenet2012_images_of_any_shape_come_out_at_the_configs_size(tmp_path, name):
  # EDM2's data, and ADM's with --config.data.name=imagenet2012 (preprocess.fit_image:
  # the central square, area-resized).
  from diffusion_jax.data import pipeline
  from tests.data.fake_datasets import prepare_imagenet2012
  prepare_imagenet2012(str(tmp_path))
  d = large_configs.load(name).data
  d.name, d.data_dir, d.read_threads = "imagenet2012", str(tmp_path), 0
  pipeline.check(d, {"data.split": (d.split, 4)})
  batch = next(pipeline.make_iterator(d, 4, seed=0))
  assert batch["image"].shape == (4, d.image_size, d.image_size, 3)
  assert sorted(batch["label"]) == [0, 1, 2, 3]
