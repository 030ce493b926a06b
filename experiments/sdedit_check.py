"""Where in the sampling trajectory does an image-conditioned model's colour noise
appear? Test images are noised to t_start and sampled from there down to 0 with the
run's sampler (SDEdit), for several t_start; t_start = 1 is ordinary sampling.

  python experiments/sdedit_check.py runs/photo_colorize

Prints, per t_start, the RMS error against the truth (0-255 levels) and the
flat-region chroma noise of experiments/cond_eval.py (1 = as in the truth), over the
first 64 test images with the image condition made from them.
"""

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from diffusion_jax.conditioning import conditions  # noqa: E402
from diffusion_jax.core import diffusion, samplers  # noqa: E402
from diffusion_jax.data import pipeline  # noqa: E402
from diffusion_jax.run import build  # noqa: E402
from diffusion_jax.training import mesh as mesh_lib  # noqa: E402
from experiments.cond_eval import flat_chroma_noise, u8  # noqa: E402


def main(workdir: str, num: int = 64):
  run, state, _ = build.restore_run(workdir, mesh_lib.make_mesh())
  model, diff, cfg = build.model(run), run.diffusion, run.sampler
  ref = pipeline.load_split_numpy(run.data, "test", num)["image"]
  x0 = jnp.asarray(ref, jnp.float32) / 127.5 - 1
  inputs = conditions.IMAGE_CONDITIONS[run.cond.image].degrade(x0, jax.random.key(0), run.cond)
  cond = conditions.make_cond(model.config, run.cond, inputs, run.data.image_size)
  apply = lambda x, t, c: model.apply({"params": state.ema_params}, x, t, c)
  inner = diffusion.make_denoiser(apply, diff)
  denoise = lambda x, t, c: jnp.clip(inner(x, t, c), -1.0, 1.0)
  sampler = samplers.SAMPLERS[cfg.sampler]
  print(f"{run.cond.image}: {cfg.sampler}, {cfg.num_steps} steps from t = 1 "
        "(proportionally fewer from lower t_start)")
  for t_start in [0.1, 0.2, 0.4, 0.6, 0.8, 1.0]:
    steps = max(2, round(cfg.num_steps * t_start))
    times = samplers.time_grid(diff.schedule, steps, cfg.grid, cfg.rho, cfg.t_min,
                               t_start, cfg.lambda_max)
    t0 = jnp.full((num,), times[0])
    a = diff.schedule.alpha(t0)[:, None, None, None]
    s = diff.schedule.sigma(t0)[:, None, None, None]
    xt = a * x0 + s * jax.random.normal(jax.random.key(1), x0.shape)
    out = jax.jit(lambda x: sampler.run(denoise, diff.schedule, times, x, cond,
                                        jax.random.key(2), cfg))(xt)
    y = u8(jnp.clip(out, -1, 1))
    rmse = float(np.sqrt(np.mean((y.astype(np.float64) - ref) ** 2)))
    print(f"t_start {float(times[0]):.3f}: rmse {rmse:.1f}, flat-region chroma noise "
          f"{flat_chroma_noise(y, ref):.2f}", flush=True)


if __name__ == "__main__":
  main(sys.argv[1])
