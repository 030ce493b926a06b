"""The optimizer of a run (the `optim` section): AdamW with linear warmup, a learning-rate
schedule after it, and global-norm gradient clipping."""

import dataclasses
from typing import Callable

import optax

from diffusion_jax.config.errors import choice, finite, require, section_values


@dataclasses.dataclass(frozen=True)
class OptimConfig:
  lr: float
  warmup_steps: int
  lr_schedule: str  # A name of LR_SCHEDULES.
  grad_clip: float
  weight_decay: float
  b1: float
  b2: float
  eps: float

  @classmethod
  def from_config(cls, optim_cfg) -> "OptimConfig":
    o = cls(**section_values(cls, optim_cfg, "optim"))
    finite("optim.lr", o.lr, 0, low_open=True)
    require(o.warmup_steps >= 0, "optim.warmup_steps must be >= 0")
    choice("optim.lr_schedule", o.lr_schedule, LR_SCHEDULES)
    finite("optim.grad_clip", o.grad_clip, 0)
    finite("optim.weight_decay", o.weight_decay, 0)
    finite("optim.b1", o.b1, 0, 1, high_open=True)
    finite("optim.b2", o.b2, 0, 1, high_open=True)
    finite("optim.eps", o.eps, 0)
    return o


# After warmup: (peak lr, steps after warmup) -> schedule.
LR_SCHEDULES: dict[str, Callable[[float, int], optax.Schedule]] = {
    "constant": lambda lr, steps: optax.constant_schedule(lr),
    "cosine": lambda lr, steps: optax.cosine_decay_schedule(lr, steps),  # To 0 at the end.
}


def learning_rate_schedule(optim_cfg, total_steps: int) -> optax.Schedule:
  """Linear warmup to `lr`, then LR_SCHEDULES[lr_schedule]."""
  warmup = optax.linear_schedule(0.0, optim_cfg.lr, max(optim_cfg.warmup_steps, 1))
  decay_steps = max(total_steps - optim_cfg.warmup_steps, 1)
  after = LR_SCHEDULES[optim_cfg.lr_schedule](optim_cfg.lr, decay_steps)
  return optax.join_schedules([warmup, after], [optim_cfg.warmup_steps])


def make_optimizer(optim_cfg, total_steps: int) -> optax.GradientTransformation:
  lr = learning_rate_schedule(optim_cfg, total_steps)
  parts = []
  if optim_cfg.grad_clip:
    parts.append(optax.clip_by_global_norm(optim_cfg.grad_clip))
  parts.append(optax.adamw(lr, b1=optim_cfg.b1, b2=optim_cfg.b2, eps=optim_cfg.eps,
                           weight_decay=optim_cfg.weight_decay))
  return optax.chain(*parts)
