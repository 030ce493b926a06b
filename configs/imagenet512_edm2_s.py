"""EDM2-S-sized latent diffusion (Karras et al. 2024): class-conditional ImageNet 512x512
in the 64x64x4 latent space of Stable Diffusion's VAE, with a U-Net of EDM2-S's layout
and size (C = 192; EDM2's Table 2: 280M parameters) and the scale settings of a pod.

What it is for: training a U-Net of EDM2-S's size and layout on a TPU slice; it is not
EDM2 (no magnitude-preserving layers, no post-hoc EMA: configs/_edm2.py lists every
difference) and reproduces none of its numbers.
Parameters: 279,615,364 (eval_shape on the 64x64x4 latent; tests/test_large_configs.py),
0.14% below EDM2-S's 280M.

Scale settings, for a v5p-128 slice (`v5p:4x4x4`, 64 chips of 95 GiB, 4 per host): bf16
compute with float32 parameters, EMA and Adam state (4.47 GB; split over the 4 chips of a
host, mesh.fsdp=4: 1.12 GB per chip), every residual and attention block rematerialised
(model.remat="block"), 32 images per chip in one microbatch. Every batch of 512x512
images also goes through SD's VAE encoder inside the train step, in its weight file's
dtype (float32 for a converted SD VAE), in 4 chunks of 8 images a chip
(latent.encode_chunks, configs/_edm2.py).
Fit, by `launch check` on v5p:4x4x4 with a file of SD's VAE architecture:
6,648 MiB a chip of 95 GiB (7%); 15,052 MiB with the 32 images encoded at once, of
which the encoder took about 10.4 GiB (experiments/README.md, "Large configs").

Command (on every host of the slice; sd_vae.npz from diffusion_jax.models.convert_vae):
  python -m diffusion_jax.main --config=configs/imagenet512_edm2_s.py --workdir=gs://BUCKET/runs/edm2_s \
      --config.data.data_dir=gs://BUCKET/tensorflow_datasets --config.latent.autoencoder=sd_vae.npz
Not run here (no accelerator, no ImageNet, no VAE weights offline); no result is claimed.
"""

from diffusion_jax.config import import_sibling

_edm2 = import_sibling(__file__, "_edm2.py")

PAPER_PARAMETERS = 280_000_000  # EDM2's Table 2, "Mparams" of EDM2-S.


def get_config():
  # EDM2's preset edm2-img512-s: 192 channels, dropout 0, 2048 Mi images.
  c = _edm2.base(channels=192, dropout=0.0, mimg=2048, num_heads=3)
  c.mesh.fsdp = 4
  c.training.microbatches = 1
  return c
