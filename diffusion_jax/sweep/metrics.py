"""Which scalars a run reports to its listeners, and how often, known from its checked
config alone: a sweep's metric is checked against them before any trial starts.

Each source is a function of the run's Spec giving {name: steps between reports}; a
part of the run that starts logging new scalars adds its source to SOURCES.
"""

from typing import Callable

from diffusion_jax.run.spec import Spec


def _training(spec: Spec) -> dict[str, int]:
  """The train step's metrics and the learning rate, every training.log_every steps."""
  every = spec.training.log_every
  return {"loss": every, "grad_norm": every, "lr": every}


def _evaluation(spec: Spec) -> dict[str, int]:
  """Periodic evaluation ("eval/<name>" for each of eval.metrics, every
  eval.every_steps steps), where the run's eval section has it."""
  every = getattr(spec.eval, "every_steps", 0)
  if not every:
    return {}
  return {f"eval/{name}": every for name in getattr(spec.eval, "metrics", ())}


SOURCES: dict[str, Callable[[Spec], dict[str, int]]] = {
    "training": _training, "evaluation": _evaluation}


def reported(spec: Spec) -> dict[str, int]:
  """{metric name: steps between its reports} of a run."""
  out: dict[str, int] = {}
  for source in SOURCES.values():
    out.update(source(spec))
  return out


__all__ = ["SOURCES", "reported"]
