"""Evaluation of a run's EMA parameters: the metrics of the `eval` section. Every
process evaluates its slice of each batch; process 0 writes the results.

--mode=eval evaluates the latest checkpoint; periodic evaluation (`eval.every_steps`)
is a training-loop hook that does the same every N steps, logs the metrics and keeps a
best checkpoint (`eval.best_metric`). Results go to stdout and to
WORKDIR/eval/step_<step>_<method>.json (bits/dim, "bpd") and
WORKDIR/eval/step_<step>_<feature net>.json (sample metrics); files are never
overwritten (a second result at a step gets a -1, -2, ... suffix).
"""

import dataclasses
import json
import time

import jax
import numpy as np
from etils import epath

from diffusion_jax.config.errors import ConfigError, require
from diffusion_jax.evaluation import best_checkpoint, features, likelihood, metrics, reference
from diffusion_jax.evaluation.eval_config import METRICS
from diffusion_jax.run import build, metadata
from diffusion_jax.run import sample as sample_run
from diffusion_jax.run import spec as spec_lib
from diffusion_jax.run import workdir as workdir_lib
from diffusion_jax.sampling import generate, inputs as inputs_lib
from diffusion_jax.training import distributed, mesh as mesh_lib


def _free_path(directory: epath.Path, stem: str) -> epath.Path:
  path, k = directory / f"{stem}.json", 0
  while path.exists():
    k += 1
    path = directory / f"{stem}-{k}.json"
  return path


def _write_result(workdir: str, stem: str, result: dict) -> dict:
  if distributed.is_primary():
    directory = epath.Path(workdir) / "eval"
    directory.mkdir(parents=True, exist_ok=True)
    path = _free_path(directory, stem)
    path.write_text(json.dumps(result, indent=2))
    result = {**result, "path": str(path)}
    print(json.dumps(result), flush=True)
  return result


def _note(msg: str) -> None:
  if distributed.is_primary():
    print(msg, flush=True)


def load_extractor(spec: spec_lib.Spec) -> features.Extractor:
  """The configured feature network, its weights read and checked (ConfigError)."""
  ecfg = spec.eval
  name = ecfg.feature_net_name(spec.data.name)
  try:
    return features.FEATURE_NETS[name].load(name, ecfg.inception_weights)
  except (FileNotFoundError, ValueError) as e:
    raise ConfigError(f"eval.feature_net={name!r}: {e}") from None


class SampleEvaluator:
  """Sample metrics of parameters: samples as the `sample` section says (eval.num_samples
  of them), their features, and the metrics against the reference split's features.

  Everything that can fail (weights, reference split, conditions) is done on
  construction, before anything compiles."""

  def __init__(self, spec: spec_lib.Spec, mesh, tokenizer, net=None, guide=None):
    ecfg = spec.eval
    self.ecfg, self.mesh, self.guide = ecfg, mesh, guide
    self.extractor = load_extractor(spec)
    dim = features.FEATURE_NETS[self.extractor.name].dim
    self.reference = reference.reference_features(
        spec.data, ecfg.reference_split, ecfg.reference_examples, self.extractor,
        ecfg.batch_size, note=_note)
    n_ref = len(self.reference.features)
    require("fd" not in ecfg.metrics or n_ref > dim,
            f"eval.reference_split={ecfg.reference_split!r} gives {n_ref} reference images, "
            f"not more than the {dim} feature dimensions of {self.extractor.name!r}: FD "
            "needs more; use a larger split or eval.reference_examples, or kid")
    self.sample_set = dataclasses.replace(spec.sample_set, num_samples=ecfg.num_samples)
    self.spec = dataclasses.replace(spec, sample_set=self.sample_set)
    self.inputs, self.record = inputs_lib.gather(self.spec, inputs_lib.Given(), tokenizer)
    self.net = net or build.model(spec)
    self.sample_fn = sample_run.make_sample_fn(spec, self.net, mesh, guide)

  def __call__(self, params, step: int) -> dict:
    t0 = time.perf_counter()
    s = self.sample_set
    images = generate.generate(self.sample_fn,
                               sample_run.sampling_params(self.spec, params, self.guide),
                               self.inputs, s.batch_size, s.seed,
                               self.mesh, num_samples=s.num_samples)
    t1 = time.perf_counter()
    feats = features.extract(self.extractor, images, self.ecfg.batch_size)
    sets = metrics.SampleSets(self.reference.features, feats["features"], feats.get("probs"))
    scalars = metrics.sample_metrics(self.ecfg.sample_metrics, sets)
    t2 = time.perf_counter()
    return {"step": int(step), **scalars, "feature_net": self.extractor.name,
            "feature_net_sha256": self.extractor.sha256, "num_samples": int(len(images)),
            "reference_split": self.ecfg.reference_split,
            "reference_examples": int(len(self.reference.features)),
            "reference_cache": self.reference.path, "sample_seed": s.seed,
            "sampler": self.spec.sampler.sampler,
            "sampler_steps": self.spec.sampler.num_steps,
            **self._guidance(),
            "sample_seconds": round(t1 - t0, 2), "metric_seconds": round(t2 - t1, 2)}


  def _guidance(self) -> dict:
    """How the samples were guided (CFG scales by condition, interval, autoguidance)."""
    g = self.spec.guidance_config
    out = {"guidance_scales": dict(self.spec.guidance),
           "guidance_interval": list(g.interval) if g.interval else None}
    if self.guide is not None:
      out["autoguidance"] = {"scale": g.autoguidance_scale,
                             "guide_workdir": self.guide.workdir,
                             "guide_step": self.guide.step}
    return out


# fold_in index of the key that makes image conditions of the likelihood's split.
CONDITION_STREAM = 1 << 30


class LikelihoodEvaluator:
  """Bits/dim of eval.split (metric "bpd"); of a conditioned model, given each example's
  own conditions (its label, caption or text embedding, and its image condition made
  from it as training makes it): log p(x | conditions)."""

  def __init__(self, spec: spec_lib.Spec, mesh, tokenizer, net=None):
    ecfg = spec.eval
    self.ecfg, self.mesh = ecfg, mesh
    data = distributed.checked(inputs_lib.load_split, spec, ecfg.split,
                               ecfg.num_examples or None)
    self.images = data["image"]
    key = jax.random.fold_in(jax.random.key(ecfg.seed), CONDITION_STREAM)
    self.inputs = inputs_lib.split_conditions(spec, data, tokenizer, key)
    self.conditioned_on = [name for name, on in (
        ("labels", spec.data.num_classes), ("text", spec.model.text),
        (f"image:{spec.cond.image}", spec.cond.image)) if on]
    self.spec, self.net = spec, net or build.model(spec)
    self.fn = likelihood.make_nll_fn(self.net, spec.diffusion, ecfg, mesh, spec.cond)

  def __call__(self, params, step: int) -> dict:
    t0 = time.perf_counter()
    ecfg = self.ecfg
    bpd = likelihood.bits_per_dim(self.fn, params, self.images, self.inputs, ecfg, self.mesh)
    result = {
        "step": int(step), "method": ecfg.method, "split": ecfg.split,
        "num_examples": int(len(bpd)), "bits_per_dim": float(bpd.mean()),
        "bits_per_dim_stderr": float(bpd.std(ddof=1) / np.sqrt(len(bpd))) if len(bpd) > 1 else 0.0,
        "conditioned_on": self.conditioned_on,
    }
    if ecfg.method == "ode":
      result.update(ode_steps=ecfg.ode_steps, hutchinson_probes=ecfg.hutchinson_probes)
    result["seconds"] = round(time.perf_counter() - t0, 2)
    return result


class Evaluation:
  """The configured metrics of parameters at a step, written to WORKDIR/eval/."""

  def __init__(self, spec: spec_lib.Spec, workdir: str, mesh, tokenizer, net=None,
               guide=None):
    ecfg = spec.eval
    self.workdir = workdir
    self.net_name = ecfg.feature_net_name(spec.data.name)
    self.likelihood = LikelihoodEvaluator(spec, mesh, tokenizer, net) if ecfg.likelihood else None
    self.samples = (SampleEvaluator(spec, mesh, tokenizer, net, guide)
                    if ecfg.sample_metrics else None)

  def __call__(self, params, step: int) -> dict:
    """{"bpd": likelihood result, "samples": sample-metric result} (those configured)."""
    out = {}
    if self.likelihood:
      r = self.likelihood(params, step)
      out["bpd"] = _write_result(self.workdir, f"step_{step}_{r['method']}", r)
    if self.samples:
      r = self.samples(params, step)
      out["samples"] = _write_result(self.workdir, f"step_{step}_{self.net_name}", r)
    return out


def scalars_of(results: dict) -> dict[str, float]:
  """The metric values of Evaluation's results, by metric name."""
  out = {}
  if "bpd" in results:
    out["bpd"] = results["bpd"]["bits_per_dim"]
  if "samples" in results:
    r = results["samples"]
    out.update({k: v for k, v in r.items()
                if k in METRICS or k.endswith("_std") and k[:-4] in METRICS})
  return out


def evaluate(config, workdir: str, mesh=None, guide_from: str | None = None) -> dict:
  """--mode=eval: the configured metrics of the latest checkpoint's EMA parameters (its
  samples autoguided by `guide_from`, WORKDIR[:STEP] of a weaker model, if given)."""
  mesh = mesh or mesh_lib.make_mesh()
  spec, found, tokenizer = build.checked(config, workdir, "eval", mesh.devices.size)
  mesh = mesh_lib.with_fsdp(mesh, spec.mesh.fsdp)
  require(not guide_from or spec.eval.sample_metrics,
          f"--guide_from={guide_from}: autoguidance changes samples only, and eval.metrics="
          f"{','.join(spec.eval.metrics)} has no sample metric")
  guide = sample_run.checked_guide(spec, guide_from, mesh.devices.size, tokenizer)
  build.use_compilation_cache(spec, workdir)
  guide = sample_run.load_guide(spec, guide, guide_from, mesh) if guide else None
  evaluation = distributed.checked(Evaluation, spec, workdir, mesh, tokenizer, None, guide)
  state = build.load_state(spec, workdir, found, mesh)
  metadata.record(workdir, spec, "eval", int(state.step))
  return evaluation(state.ema_params, int(state.step))


def evaluate_likelihood(config, workdir: str, mesh=None) -> dict:
  """Bits/dim of eval.split under the latest checkpoint (the "bpd" result of evaluate)."""
  return evaluate(config, workdir, mesh).get("bpd", {})


class PeriodicEvaluation:
  """The training hook of `eval.every_steps`: evaluates every N steps and at the last
  step, returns the metrics to log ("eval/<name>"), and keeps the best checkpoint
  (`eval.best_metric`). Built (and so checked) before training starts."""

  def __init__(self, spec: spec_lib.Spec, workdir: str, mesh, tokenizer, net=None):
    self.every, self.last = spec.eval.every_steps, spec.training.num_steps
    self.evaluation = Evaluation(spec, workdir, mesh, tokenizer, net)
    metric = spec.eval.best_metric
    self.best = best_checkpoint.BestCheckpoint(
        workdir, metric, METRICS[metric].lower_is_better,
        workdir_lib.model_meta(spec, tokenizer)) if metric else None

  def __call__(self, step: int, state) -> dict | None:
    if step % self.every and step != self.last:
      return None
    t0 = time.perf_counter()
    values = scalars_of(self.evaluation(state.ema_params, step))
    out = {f"eval/{k}": v for k, v in values.items()}
    if self.best is not None and self.best.update(step, state, values):
      out["eval/best_step"] = float(step)
    out["eval/seconds"] = time.perf_counter() - t0
    return out


__all__ = ["Evaluation", "PeriodicEvaluation", "SampleEvaluator", "evaluate",
           "evaluate_likelihood", "load_extractor"]
