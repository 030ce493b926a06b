"""python -m diffusion_jax.sweep: see diffusion_jax.sweep.cli."""

from diffusion_jax.sweep.cli import main

if __name__ == "__main__":
  main()
