"""The `eval` section: which metrics `--mode=eval` and periodic evaluation compute,
on what, and how. The metric names are METRICS: the likelihood ("bpd") and the
sample metrics of evaluation.metrics.SAMPLE_METRICS."""

import dataclasses
from typing import NamedTuple

import numpy as np

from diffusion_jax.config.errors import choice, require, section_values
from diffusion_jax.core import schedules
from diffusion_jax.evaluation import features, likelihood
from diffusion_jax.evaluation.metrics import SAMPLE_METRICS


class Metric(NamedTuple):
  kind: str  # "likelihood": of a data split; "samples": of samples against a reference.
  lower_is_better: bool


# eval.metrics names.
METRICS: dict[str, Metric] = {
    "bpd": Metric("likelihood", lower_is_better=True),  # Bits/dim of eval.split.
    **{name: Metric("samples", m.lower_is_better) for name, m in SAMPLE_METRICS.items()},
}


def parse_names(value) -> tuple[str, ...]:
  """"fd,kid" (a config string) or a sequence of names -> a tuple of names."""
  items = value.split(",") if isinstance(value, str) else list(value)
  return tuple(str(v).strip() for v in items if str(v).strip())


@dataclasses.dataclass(frozen=True)
class EvalConfig:
  split: str
  num_examples: int  # 0 = the whole split.
  batch_size: int
  method: str  # A name of likelihood.METHODS.
  ode_steps: int
  hutchinson_probes: int
  t_min: float
  t_max: float
  lambda_max: float
  seed: int
  metrics: tuple[str, ...] = ("bpd",)  # Names of METRICS.
  every_steps: int = 0  # Periodic evaluation while training; 0 = off.
  num_samples: int = 1000
  feature_net: str = features.AUTO  # A name of features.FEATURE_NETS, or "auto".
  inception_weights: str = "inception_fid.npz"
  reference_split: str = "train"
  reference_examples: int = 0  # 0 = the whole split.
  best_metric: str = ""  # Keep a best checkpoint by this metric; "" = none.

  @classmethod
  def from_config(cls, eval_cfg) -> "EvalConfig":
    values = section_values(cls, eval_cfg, "eval")
    if "metrics" in values:
      values["metrics"] = parse_names(values["metrics"])
    e = cls(**values)
    choice("eval.method", e.method, likelihood.METHODS)
    require(e.num_examples >= 0, "eval.num_examples must be >= 0 (0 = the whole split)")
    require(e.ode_steps > 0 and e.hutchinson_probes > 0,
            "eval.ode_steps and eval.hutchinson_probes must be > 0")
    require(0 < e.t_min < e.t_max <= 1, "eval: need 0 < t_min < t_max <= 1")
    require(e.lambda_max > 0, "eval.lambda_max must be > 0 (inf = no cap)")
    require(bool(e.metrics), "eval.metrics is empty; known: " + str(sorted(METRICS)))
    for name in e.metrics:
      choice("eval.metrics", name, METRICS)
    require(len(set(e.metrics)) == len(e.metrics), f"eval.metrics={e.metrics} repeats a name")
    require(e.every_steps >= 0, f"eval.every_steps={e.every_steps} must be >= 0 (0 = off)")
    require(e.num_samples >= 2, f"eval.num_samples={e.num_samples} must be >= 2")
    require(e.reference_examples >= 0,
            "eval.reference_examples must be >= 0 (0 = the whole split)")
    if e.feature_net != features.AUTO:
      choice("eval.feature_net", e.feature_net, features.FEATURE_NETS,
             f" (or {features.AUTO!r}: the dataset's own network, else inception)")
    require(not e.best_metric or e.best_metric in e.metrics,
            f"eval.best_metric={e.best_metric!r} is not one of eval.metrics={e.metrics}")
    return e

  @property
  def sample_metrics(self) -> tuple[str, ...]:
    return tuple(m for m in self.metrics if METRICS[m].kind == "samples")

  @property
  def likelihood(self) -> bool:
    return "bpd" in self.metrics

  def feature_net_name(self, data_name: str) -> str:
    return features.resolve(self.feature_net, data_name)

  def check_data(self, data_name: str, image_size: int, channels: int) -> None:
    """The feature network measures this data, with enough samples for FD."""
    if not self.sample_metrics:
      return
    name = self.feature_net_name(data_name)
    net = features.FEATURE_NETS[name]
    why = net.check_input(image_size, channels)
    require(not why, f"eval.feature_net={name!r} {why}")
    require("is" not in self.metrics or net.num_classes > 0,
            f"eval.metrics has 'is', but eval.feature_net={name!r} has no single classifier "
            "head (the Inception Score needs one)")
    require("fd" not in self.metrics or self.num_samples > net.dim,
            f"eval.num_samples={self.num_samples} is not more than the {net.dim} feature "
            f"dimensions of eval.feature_net={name!r}: FD needs more samples than dimensions "
            "(its covariance is singular otherwise); sample more, or use kid, which works "
            "with any number")

  def check_diffusion(self, diff) -> None:
    require(not self.likelihood or self.method != "vlb" or diff.schedule.num_steps > 0,
            "eval.method='vlb' is the discrete-time bound: it needs diffusion.num_steps > 0")
    require(not self.likelihood or self.method != "ode" or self.lambda_max < np.inf
            or np.isfinite(float(schedules.lam(diff.schedule, self.t_max))),
            f"eval: sigma/alpha is infinite at eval.t_max={self.t_max} on this process "
            "(alpha = 0 there, as for flow at t = 1): set eval.lambda_max finite or "
            "eval.t_max < 1")
