"""Hyperparameter sweeps: declared in a config file beside get_config (`space`), checked
as single runs are (`plan`), run by an engine (`local`, `ray_engine`), tabulated and
plotted (`results`); the command line is `python -m diffusion_jax.sweep` (`cli`).

Config files import `diffusion_jax.sweep.space`, which imports nothing heavy.
"""
