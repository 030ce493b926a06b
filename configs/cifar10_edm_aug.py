"""Karras et al. (2022), EDM: class-conditional CIFAR-10 with the DDPM++ network and
EDM's non-leaking augmentation (their config F, "cond-vp"; `train.py --cond=1
--arch=ddpmpp --precond=edm --augment=0.12`).

configs/cifar10_edm_cond.py (network, process, training, sampling: its docstring) with
the augmentation of training/augment.py (docs/configs.md, "Augmentation"): EDM's ops
(x-flip, y-flip, isotropic scaling, rotation, anisotropic scaling, fractional
translation), each on with probability 0.12 per image, except x-flip, which EDM's
pipeline applies to every image (a fair coin decides whether it mirrors); the 9 labels
go into the noise-level embedding through a bias-free linear layer (model.augment_dim
9); zero labels at sampling. Dataset flips are off (EDM's `--xflip` is off for CIFAR-10:
the pipeline's labelled x-flip takes their place).

Network: 55,739,523 parameters: the config without augmentation's 55,738,371 and the
9 x 128 augmentation embedding (EDM's SongUNet: 55,735,299 with the same layer).
Not the same in detail: the label of anisotropic scaling is w cos 2r, w sin 2r (EDM:
w cos r, w sin r; training/augment.py says why); the resampling is 2x lanczos3
upsampling, bilinear reads and a 2x2 mean (EDM: a sym6 wavelet filter); the other
differences of configs/cifar10_edm_cond.py. Paper: FID 1.79 (Table 2, config F).

Needs cifar10 prepared as ArrayRecord in data_dir (docs/datasets.md). Command (GPUs/TPU):
  python -m diffusion_jax.main --config=configs/cifar10_edm_aug.py \\
      --workdir=runs/cifar10_edm_aug --config.data.data_dir=/path/to/tensorflow_datasets
Not yet run here; no result is claimed.
"""

from diffusion_jax.config import import_sibling

_edm_cond = import_sibling(__file__, "cifar10_edm_cond.py")


def get_config():
  c = _edm_cond.get_config()
  c.data.random_flip = False
  c.augment.p = 0.12
  c.augment.ops = ("xflip", "yflip", "scale", "rotate", "aniso", "translate")
  c.augment.always = ("xflip",)
  c.model.augment_dim = 9
  return c
