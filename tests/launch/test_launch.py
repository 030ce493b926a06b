"""The launchers as users run them: `python -m diffusion_jax.launch ...` in a subprocess,
with a fake `gcloud` / `sbatch` first on PATH that records its arguments; and the
ahead-of-time TPU check compiled on this CPU with libtpu."""

import json
import os
import subprocess
import sys
import tarfile

import jax
import numpy as np
import pytest

from tests.conftest import ROOT

FAKE = """#!{python}
import json, os, sys
with open(os.environ["FAKE_LOG"], "a") as f:
  f.write(json.dumps(sys.argv) + "\\n")
"""


def launch(tmp_path, *argv, fakes=("gcloud", "sbatch")):
  """Runs the launcher in tmp_path; returns (result, the fake tools' calls)."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir(exist_ok=True)
  for name in fakes:
    tool = bin_dir / name
    tool.write_text(FAKE.format(python=sys.executable))
    tool.chmod(0o755)
  log = tmp_path / "calls.jsonl"
  env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_LOG": str(log),
         "PYTHONPATH": ROOT}
  r = subprocess.run([sys.executable, "-m", "diffusion_jax.launch", *argv], env=env,
                     cwd=tmp_path, capture_output=True, text=True, timeout=300)
  calls = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
  return r, calls


RUN = ["--config=configs/cifar10_ddpm.py", "--workdir=gs://bucket/runs/cifar10"]


def test_tpu_vm_copies_installs_and_starts_main_on_every_worker(tmp_path):
  r, calls = launch(tmp_path, "tpu-vm", "--name=pod", "--zone=us-central2-b",
                    "--project=proj", "--", *RUN)
  assert r.returncode == 0, r.stderr
  assert [c[1:6] for c in calls] == [["compute", "tpus", "tpu-vm", "scp", calls[0][5]],
                                     ["compute", "tpus", "tpu-vm", "ssh", "pod"],
                                     ["compute", "tpus", "tpu-vm", "ssh", "pod"]]
  for c in calls:
    assert "--worker=all" in c and "--zone=us-central2-b" in c and "--project=proj" in c
  archive = calls[0][5]
  assert calls[0][6] == "pod:diffusion_jax_src.tar.gz"
  with tarfile.open(archive) as tar:
    names = tar.getnames()
  assert "./pyproject.toml" in names and "./diffusion_jax/main.py" in names
  assert not any("/.git/" in n or n.endswith("/.git") or "/.venv" in n for n in names)
  install = next(a for a in calls[1] if a.startswith("--command="))
  assert "pip install" in install and "[tpu]" in install
  run = next(a for a in calls[2] if a.startswith("--command="))
  assert run.endswith("python3 -m diffusion_jax.main " + " ".join(RUN))
  # The printed commands are the ones that ran.
  assert r.stdout.count("gcloud compute tpus tpu-vm") == 3


def test_tpu_vm_dry_run_prints_and_runs_nothing(tmp_path):
  r, calls = launch(tmp_path, "tpu-vm", "--name=pod", "--zone=z", "--dry_run", "--", *RUN)
  assert r.returncode == 0, r.stderr
  assert calls == [] and r.stdout.count("gcloud compute tpus tpu-vm") == 3


def test_slurm_writes_a_script_of_one_task_per_gpu_and_submits_it(tmp_path):
  r, calls = launch(tmp_path, "slurm", "--nodes=2", "--gpus_per_node=4", "--partition=gpu",
                    "--time=01:00:00", "--", *RUN)
  assert r.returncode == 0, r.stderr
  text = (tmp_path / "diffusion_jax.sbatch").read_text()
  for line in ("#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=4", "#SBATCH --gpus-per-node=4",
               "#SBATCH --partition=gpu", "#SBATCH --time=01:00:00"):
    assert line in text.splitlines()
  assert "srun python3 -m diffusion_jax.main " + " ".join(RUN) in text
  assert calls == [["%s/bin/sbatch" % tmp_path, "diffusion_jax.sbatch"]] or \
      [c[1:] for c in calls] == [["diffusion_jax.sbatch"]]


@pytest.mark.parametrize("argv,message", [
    (["tpu-vm", "--name=pod", "--zone=z", "--", "--process_id=1", *RUN],
     "--process_id: JAX finds the TPU VM's workers itself"),
    (["tpu-vm", "--name=pod", "--zone=z"], "give the run's flags after `--`"),
    (["tpu-vm", "--zone=z", "--", *RUN], "the following arguments are required: --name"),
    (["slurm", "--nodes=0", "--", *RUN], "--nodes=0 must be > 0"),
    (["slurm", "--nodes=1", "--", "--num_processes=2", *RUN],
     "--num_processes: JAX finds the SLURM tasks itself"),
    (["submarine"], "unknown command 'submarine'"),
])
def test_bad_launches_are_one_error_and_run_nothing(tmp_path, argv, message):
  r, calls = launch(tmp_path, *argv)
  assert r.returncode == 2 and message in r.stderr, r.stderr
  assert calls == [] and not (tmp_path / "diffusion_jax.sbatch").exists()


def test_a_missing_tool_is_named(tmp_path):
  r, _ = launch(tmp_path, "slurm", "--nodes=1", "--", *RUN, fakes=())
  env_path = os.environ["PATH"].split(":")
  if any(os.path.exists(os.path.join(p, "sbatch")) for p in env_path):
    pytest.skip("a real sbatch is installed here")
  assert r.returncode == 2 and "'sbatch' is not installed" in r.stderr, r.stderr


def _has_libtpu() -> bool:
  try:
    import libtpu  # noqa: F401
  except ImportError:
    return False
  return True


TINY = ["--config.model.ch=16", "--config.model.ch_mult=(1,2)", "--config.model.num_res_blocks=1",
        "--config.model.attn_resolutions=()", "--config.training.batch_size=8"]


def vae_file(path) -> int:
  """Writes a VAE weight file whose encoder is far larger than the tiny U-Net's train
  state (9 MiB a device here); returns the encoder's bytes."""
  from diffusion_jax.models import convert_vae
  from diffusion_jax.models.autoencoder import AutoencoderConfig
  from tests.models.test_autoencoder import rand_params
  cfg = AutoencoderConfig(block_out_channels=(256, 256, 256), layers_per_block=1)
  params = rand_params(cfg)
  convert_vae.save(str(path), cfg, params)
  return sum(np.asarray(x).size * 4 for x in jax.tree.leaves(params["encoder"]))


@pytest.mark.skipif(not _has_libtpu(), reason="libtpu is not installed (the `tpu` extra)")
def test_check_compiles_for_a_tpu_topology_on_this_cpu(tmp_path):
  # A latent config: a pixel config's train step with the encoder in front (the pixel
  # path alone: compiled for this host's CPU in the next test).
  encoder_mib = vae_file(tmp_path / "vae.npz") / 2**20
  r, _ = launch(tmp_path, "check", f"--config={ROOT}/configs/photo_latent.py",
                "--topology=v5e:2x2", "--config.latent.autoencoder=vae.npz", *TINY)
  assert r.returncode == 0, r.stderr[-3000:]
  assert "topology v5e:2x2: 4 devices (TPU v5 lite), 1 host; global batch 8 (2 per device)" \
      in r.stdout
  total = next(line for line in r.stdout.splitlines() if line.strip().startswith("total"))
  assert "of 16.0 GiB HBM: fits" in total
  # The encoder's weights are among the step's arguments (jit drops the unused decoder's).
  arguments = next(ln for ln in r.stdout.splitlines() if ln.strip().startswith("arguments"))
  assert encoder_mib > 25 and float(arguments.split()[1]) >= encoder_mib, (encoder_mib, r.stdout)
  # A batch that does not split over the topology's devices is refused before compiling.
  r, _ = launch(tmp_path, "check", f"--config={ROOT}/configs/digits.py", "--topology=v5e:2x2",
                *TINY[:-1], "--config.training.batch_size=6")
  assert r.returncode == 2 and "is not divisible by the 4 devices" in r.stderr, r.stderr


def test_check_of_pixel_and_latent_cache_configs_on_this_host_s_cpu(tmp_path):
  # The same report, compiled for this host's CPU (no libtpu).
  from diffusion_jax.config import files
  from diffusion_jax.config.errors import ConfigError
  from diffusion_jax.launch import check
  from tests.conftest import apply_overrides
  cpu = jax.devices("cpu")[:1]
  tiny = {"model.ch": 16, "model.ch_mult": (1, 2), "model.num_res_blocks": 1,
          "model.attn_resolutions": (), "training.batch_size": 8}
  pixel = check.report_for(
      apply_overrides(files.load(os.path.join(ROOT, "configs", "digits.py")), tiny), cpu, "cpu")
  assert pixel.batch_size == 8 and pixel.num_devices == 1 and pixel.fits is None
  assert pixel.arguments > 0 and pixel.temporaries > 0 and pixel.aliased > 0
  assert "global batch 8 (8 per device)" in pixel.text()
  # From a latent cache: the state and its batch of 8x8x4 latents' posteriors, no
  # encoder (28 MiB).
  encoder = vae_file(tmp_path / "vae.npz")
  config = apply_overrides(files.load(os.path.join(ROOT, "configs", "photo_latent.py")), {
      **tiny, "latent.autoencoder": str(tmp_path / "vae.npz"),
      "latent.cache": str(tmp_path / "none")})
  report = check.report_for(config, cpu, "cpu")
  assert 0 < report.arguments < encoder / 4, (report.arguments, encoder)
  # An autoencoder that is not there: the run's own error, before anything compiles.
  config.latent.autoencoder = str(tmp_path / "none.npz")
  with pytest.raises(ConfigError, match="none.npz': no such autoencoder workdir or weight"):
    check.report_for(config, cpu, "cpu")


def test_check_traces_the_accelerator_program_not_the_cpu_one():
  # Traced here on the CPU, "auto" would chunk the kernel gradients: not what a TPU runs.
  from diffusion_jax.config import files
  from diffusion_jax.launch import check
  config = files.load(os.path.join(ROOT, "configs", "cifar10_ddpm.py"))
  assert config.model.conv_impl == "auto"
  assert check.as_on_device(config).model.conv_impl == "xla"
  assert config.model.conv_impl == "auto"  # The caller's config is not changed.


@pytest.mark.skipif(not _has_libtpu(), reason="libtpu is not installed (the `tpu` extra)")
def test_check_names_an_unknown_topology(tmp_path):
  r, _ = launch(tmp_path, "check", f"--config={ROOT}/configs/digits.py", "--topology=v99:9x9")
  assert r.returncode == 2 and "--topology='v99:9x9' is not a TPU topology" in r.stderr, r.stderr
