"""A cheap stand-in for a training run, for the engines' tests: it reports a 'loss'
that depends on the learning rate, at the run's log steps, through the listeners."""

import math


def quadratic(config, workdir: str, listeners=()) -> None:
  """loss = (log10(lr) + 2.5)^2 + 1 / step: best at lr = 10^-2.5, lower as it goes."""
  lr, t = config.optim.lr, config.training
  for step in range(t.log_every, t.num_steps + 1, t.log_every):
    for listener in listeners:
      listener(step, {"loss": (math.log10(lr) + 2.5) ** 2 + 1 / step})
