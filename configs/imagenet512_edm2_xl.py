"""EDM2-XL-sized latent diffusion (Karras et al. 2024): class-conditional ImageNet 512x512
in the 64x64x4 latent space of Stable Diffusion's VAE, with a U-Net of EDM2-XL's layout
and size (C = 384; EDM2's Table 2: 1119M parameters) and the scale settings of a pod.

What it is for: training a 1.1B-parameter U-Net of EDM2-XL's size and layout on a TPU
slice; it is not EDM2 (no magnitude-preserving layers, no post-hoc EMA: configs/_edm2.py
lists every difference) and reproduces none of its numbers.
Parameters: 1,116,466,948 (eval_shape on the 64x64x4 latent; tests/test_large_configs.py),
0.23% below EDM2-XL's 1119M.

Scale settings, for a v5p-128 slice (`v5p:4x4x4`, 64 chips of 95 GiB, 4 per host): bf16
compute with float32 parameters, EMA and Adam state (17.86 GB; split over the 4 chips of
a host, mesh.fsdp=4: 4.47 GB per chip), every residual and attention block
rematerialised (model.remat="block"), 32 images per chip in 2 microbatches of 16 (the
microbatches split the U-Net's work; SD's VAE encodes all 32 first, in 4 chunks of 8:
latent.encode_chunks, configs/_edm2.py).
Fit, by `launch check` on v5p:4x4x4 with a file of SD's VAE architecture:
10,521 MiB a chip of 95 GiB (11%); 17,936 MiB with the 32 images encoded at once
(experiments/README.md, "Large configs").

Command (on every host of the slice; sd_vae.npz from diffusion_jax.models.convert_vae):
  python -m diffusion_jax.main --config=configs/imagenet512_edm2_xl.py --workdir=gs://BUCKET/runs/edm2_xl \
      --config.data.data_dir=gs://BUCKET/tensorflow_datasets --config.latent.autoencoder=sd_vae.npz
Not run here (no accelerator, no ImageNet, no VAE weights offline); no result is claimed.
"""

from diffusion_jax.config import import_sibling

_edm2 = import_sibling(__file__, "_edm2.py")

PAPER_PARAMETERS = 1_119_000_000  # EDM2's Table 2, "Mparams" of EDM2-XL.


def get_config():
  # EDM2's preset edm2-img512-xl: 384 channels, dropout 0.1, 1280 Mi images.
  c = _edm2.base(channels=384, dropout=0.1, mimg=1280, num_heads=6)
  c.mesh.fsdp = 4
  c.training.microbatches = 2
  return c
