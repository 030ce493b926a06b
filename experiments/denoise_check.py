"""One denoiser call on noised test images: is the model's x0 estimate better than
the noisy input, noise level by noise level? (Separates a bad denoiser from a sampler
problem.)

  python experiments/denoise_check.py runs/photo_colorize

Prints, for t in 0.01 ... 0.6, the RMS error (0-255 levels) of x_t / alpha_t and of
the denoiser's x0 estimate, over the first 64 test images, with the image condition
made from those images.
"""

import os
import sys

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from diffusion_jax.conditioning import conditions  # noqa: E402
from diffusion_jax.core import diffusion  # noqa: E402
from diffusion_jax.data import pipeline  # noqa: E402
from diffusion_jax.run import build  # noqa: E402
from diffusion_jax.training import mesh as mesh_lib  # noqa: E402


def main(workdir: str, num: int = 64):
  run, state, _ = build.restore_run(workdir, mesh_lib.make_mesh())
  model, diff = build.model(run), run.diffusion
  size = run.data.image_size
  x0 = jnp.asarray(pipeline.load_split_numpy(run.data, "test", num)["image"],
                   jnp.float32) / 127.5 - 1
  inputs = {}
  if run.cond.image:
    spec = conditions.IMAGE_CONDITIONS[run.cond.image]
    inputs = spec.degrade(x0, jax.random.key(0), run.cond)
  cond = conditions.make_cond(model.config, run.cond, inputs, size)
  apply = lambda x, t, c: model.apply({"params": state.ema_params}, x, t, c)
  denoise = jax.jit(diffusion.make_denoiser(apply, diff))
  rmse = lambda y: float(jnp.sqrt(jnp.mean((y - x0) ** 2)) * 127.5)
  for t in [0.01, 0.03, 0.1, 0.3, 0.6]:
    tt = jnp.full((num,), t)
    a = diff.schedule.alpha(tt)[:, None, None, None]
    s = diff.schedule.sigma(tt)[:, None, None, None]
    xt = a * x0 + s * jax.random.normal(jax.random.key(1), x0.shape)
    print(f"t={t}: sigma {float(s[0, 0, 0, 0]):.3f}, rmse of x_t/alpha {rmse(xt / a):.1f}, "
          f"of the x0 estimate {rmse(denoise(xt, tt, cond)):.1f}")


if __name__ == "__main__":
  main(sys.argv[1])
