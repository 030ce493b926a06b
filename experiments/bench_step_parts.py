"""Where the CIFAR-10 network's train step and forward pass spend their time: each timed
whole, and with one part left out, in one invocation, interleaved.

  python experiments/bench_step_parts.py --batch=8 --rounds=3 \
      --out=experiments/results/bench_step_parts_cpu.jsonl

The network, train step and forward pass are experiments/bench_unet.py's (configs/
cifar10_ddpm.py, compiled as training compiles them). PARTS:

  full           as it is
  no_dropout     model.dropout = 0
  no_attention   model.attn_resolutions = (): the 16x16 attention blocks removed
  no_groupnorm   every GroupNorm an identity
  plain_update   the update without the EMA, the non-finite check and its conditional:
                 the clipped AdamW update alone (the peer's step has no EMA either)

A part left out changes what is computed, so these are timings only: the difference to
`full` within a round is what the part costs. Each part is a worker process that stays
up (parts are swapped in before anything is traced); each round times every worker,
in the opposite order every other round. A benchmark that prints numbers, never a test.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from experiments import machine  # noqa: E402

PARTS = ("full", "no_dropout", "no_attention", "no_groupnorm", "plain_update")


def _without_groupnorm():
  import flax.linen as nn

  class Identity(nn.Module):
    num_groups: int | None = None
    dtype: object = None

    def __call__(self, x):
      return x

  nn.GroupNorm = Identity


def _plain_update():
  import optax
  from diffusion_jax.training import step

  def apply_gradients(state, loss, grads, tx, ema_decay, metrics=None):
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    return (state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                          opt_state=opt_state), {"loss": loss})

  step.apply_gradients = apply_gradients


def worker(part: str, batch: int) -> None:
  """Builds the part's network and answers lines "train N" / "eval N" with the seconds
  per step of N steps."""
  overrides = {"no_dropout": {"dropout": 0.0}, "no_attention": {"attn_resolutions": ()}}
  patch = {"no_groupnorm": _without_groupnorm, "plain_update": _plain_update}.get(part)
  if patch:
    patch()
  import jax
  from experiments.bench_unet import JaxBench, _time
  bench = JaxBench(batch, "float32", 0, model_overrides=overrides.get(part))
  state = bench.state

  def train():
    nonlocal state
    state, metrics = bench.step(state, bench.data)
    return metrics

  forward = lambda: bench.fwd(state.params, bench.data["image"], bench.t)
  jax.block_until_ready((train(), forward()))
  print(json.dumps({"part": part, "params": int(bench.params), **bench.timings}), flush=True)
  for line in sys.stdin:
    name, n = line.split()
    seconds = _time(train if name == "train" else forward, int(n))
    print(json.dumps({"seconds_per_step": seconds}), flush=True)


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--steps", type=int, default=4, help="Steps per timed block.")
  p.add_argument("--rounds", type=int, default=3)
  p.add_argument("--parts", default=",".join(PARTS))
  p.add_argument("--out", default="", help="Also append the summary line to this file.")
  p.add_argument("--worker", default="", help=argparse.SUPPRESS)
  args = p.parse_args()
  if args.worker:
    return worker(args.worker, args.batch)
  parts = args.parts.split(",")
  unknown = sorted(set(parts) - set(PARTS))
  if unknown or parts[0] != "full":
    sys.exit(f"error: --parts must start with full and name only {PARTS}; got {args.parts!r}")
  if min(args.batch, args.steps, args.rounds) < 1:
    sys.exit("error: --batch, --steps and --rounds must be at least 1")
  import jax
  where = {"backend": jax.default_backend(), "cpu": machine.cpu_model(),
           "jax": jax.__version__, "batch": args.batch}
  print(json.dumps(where), flush=True)
  procs = {}
  for part in parts:  # One at a time: compiling beside a timed worker would disturb it.
    procs[part] = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), f"--worker={part}", f"--batch={args.batch}"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    line = procs[part].stdout.readline()
    if not line:
      sys.exit(f"error: the {part} worker did not start")
    print(line.strip(), flush=True)

  def seconds(part, name):
    procs[part].stdin.write(f"{name} {args.steps}\n")
    procs[part].stdin.flush()
    return json.loads(procs[part].stdout.readline())["seconds_per_step"]

  rounds = []
  for r in range(args.rounds):
    row = {}
    for part in (parts if r % 2 == 0 else parts[::-1]):
      row[f"train_ms_{part}"] = 1e3 * seconds(part, "train")
      row[f"eval_ms_{part}"] = 1e3 * seconds(part, "eval")
    rounds.append(row)
    print(json.dumps({"round": r, **row}), flush=True)
  for proc in procs.values():
    proc.stdin.close()
    proc.wait()
  summary = {k: statistics.median(row[k] for row in rounds) for k in rounds[0]}
  for part in parts[1:]:  # What the part costs: full minus without it, within a round.
    for kind in ("train", "eval"):
      full, without = f"{kind}_ms_full", f"{kind}_ms_{part}"
      summary[f"{kind}_share_{part}"] = statistics.median(
          (row[full] - row[without]) / row[full] for row in rounds)
  machine.emit({"summary": summary, **where}, args.out)


if __name__ == "__main__":
  main()
