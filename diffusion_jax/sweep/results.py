"""A sweep's results, read back from its directory: one row per trial (overrides,
status, the metric at each report, best, final, wall time) as DIR/results.csv,
DIR/results.md and DIR/results.json, and DIR/results.png, the metric against each field
that varies (matplotlib, from the `sweep` extra; without it the plot is skipped).

Trials are ranked by their final value of the metric (the value at their last
report); `best` is the best value over their reports.
"""

import csv
import dataclasses
import io
import json
import os

from diffusion_jax.sweep import claims, records

PENDING, RUNNING = "pending", "running"
MD_STEPS = 6  # Report steps shown in the markdown table (the csv has all).


@dataclasses.dataclass(frozen=True)
class Row:
  id: str
  overrides: dict
  status: str  # done | stopped | failed | running | pending
  reason: str
  history: dict  # {step: metric value}
  wall_s: float | None
  attempts: int

  def final(self) -> float | None:
    return list(self.history.values())[-1] if self.history else None

  def best(self, mode: str) -> tuple[int, float] | None:
    if not self.history:
      return None
    pick = min if mode == "min" else max
    return pick(self.history.items(), key=lambda kv: (kv[1], kv[0]))


def meta(workdir: str) -> dict:
  m = records.read_json(os.path.join(workdir, records.SWEEP))
  if m is None:
    from diffusion_jax.config.errors import ConfigError
    raise ConfigError(f"--workdir={workdir!r} holds no sweep ({records.SWEEP} not found)")
  return m


def collect(workdir: str, stale_after: float = 120.0) -> list[Row]:
  m = meta(workdir)
  rows = []
  for tid in records.trial_ids(workdir):
    tdir = records.trial_dir(workdir, tid)
    trial = records.read_json(os.path.join(tdir, "trial.json")) or {}
    r = records.result(tdir)
    if r:
      status, reason, wall = r["status"], r.get("reason", ""), r.get("wall_s")
    else:
      live = claims.is_live(claims.read(tdir), stale_after)
      status, reason, wall = (RUNNING if live else PENDING), "", None
    n = sum(a["event"] == "start" for a in records.attempts(tdir))
    rows.append(Row(tid, trial.get("overrides", {}), status, reason,
                    records.history(tdir, m["metric"]), wall, n))
  return rows


def ranked(rows: list[Row], mode: str) -> list[Row]:
  """Finished trials best first (by final value), then the others by id."""
  done = [r for r in rows if r.status == "done" and r.final() is not None]
  sign = 1 if mode == "min" else -1
  done.sort(key=lambda r: (sign * r.final(), r.id))
  return done + [r for r in rows if r not in done]


def _fields(m: dict, rows: list[Row]) -> list[str]:
  seen = dict.fromkeys(m.get("fields", []))
  for r in rows:
    seen.update(dict.fromkeys(r.overrides))
  return list(seen)


def _num(v: float | None) -> str:
  return "" if v is None else f"{v:.6g}"


def _wall(s: float | None) -> str:
  if s is None:
    return ""
  m, sec = divmod(int(s), 60)
  return f"{m}m{sec:02d}s"


def to_csv(m: dict, rows: list[Row]) -> str:
  fields = _fields(m, rows)
  steps = sorted({s for r in rows for s in r.history})
  out = io.StringIO()
  w = csv.writer(out)
  metric = m["metric"]
  w.writerow(["trial", *fields, "status", "reason", f"final {metric}", f"best {metric}",
              "best step", "wall_s", "attempts", *(f"{metric}@{s}" for s in steps)])
  for r in ranked(rows, m["mode"]):
    best = r.best(m["mode"])
    w.writerow([r.id, *(r.overrides.get(f, "") for f in fields), r.status, r.reason,
                _num(r.final()), _num(best[1] if best else None), best[0] if best else "",
                "" if r.wall_s is None else f"{r.wall_s:.1f}", r.attempts,
                *(_num(r.history.get(s)) for s in steps)])
  return out.getvalue()


def _shown_steps(steps: list[int]) -> list[int]:
  if len(steps) <= MD_STEPS:
    return steps
  idx = sorted({round(i * (len(steps) - 1) / (MD_STEPS - 1)) for i in range(MD_STEPS)})
  return [steps[i] for i in idx]


def to_json(m: dict, rows: list[Row]) -> dict:
  """The results for programs (experiments/results.json reads values from it): the
  best trial by final value, and every trial by id."""
  order = ranked(rows, m["mode"])
  best = order[0] if order and order[0].status == "done" else None

  def trial(r: Row) -> dict:
    b = r.best(m["mode"])
    return {"overrides": r.overrides, "status": r.status, "reason": r.reason,
            "final": r.final(), "best": b[1] if b else None, "best_step": b[0] if b else None,
            "history": {str(k): v for k, v in r.history.items()}, "wall_s": r.wall_s,
            "attempts": r.attempts}
  return {"config": m["config"], "metric": m["metric"], "mode": m["mode"],
          "best": {"trial": best.id, "value": best.final(), "overrides": best.overrides}
          if best else None,
          "trials": {r.id: trial(r) for r in rows}}


def _split_fields(fields: list[str], rows: list[Row]) -> tuple[list[str], dict]:
  """(fields whose values differ between trials, {field: value} the same in all)."""
  same = {}
  for f in fields:
    values = {repr(r.overrides.get(f)) for r in rows}
    if len(values) == 1 and len(rows) > 1 and f in rows[0].overrides:
      same[f] = rows[0].overrides[f]
  return [f for f in fields if f not in same], same


def markdown(workdir: str, rows: list[Row] | None = None) -> str:
  m = meta(workdir)
  rows = collect(workdir) if rows is None else rows
  fields, metric, mode = _fields(m, rows), m["metric"], m["mode"]
  fields, same = _split_fields(fields, rows)
  steps = _shown_steps(sorted({s for r in rows for s in r.history}))
  tally = {}
  for r in rows:
    tally[r.status] = tally.get(r.status, 0) + 1
  lines = [f"Sweep of `{m['config']}`: {len(rows)} trials "
           f"({', '.join(f'{v} {k}' for k, v in sorted(tally.items()))}); "
           f"metric `{metric}` ({mode}), ranked by its final value."]
  order = ranked(rows, mode)
  if order and order[0].status == "done":
    b = order[0]
    varied = {k: v for k, v in b.overrides.items() if k not in same}
    lines.append(f"Best: {b.id} ({', '.join(f'{k}={v!r}' for k, v in varied.items())}), "
                 f"{metric} {b.final():.4g}.")
  if same:
    lines.append(f"Every trial: {', '.join(f'{k}={v!r}' for k, v in same.items())}.")
  lines.append("")
  head = ["trial", *fields, "status", *(f"{metric} @{s}" for s in steps), "best", "final",
          "wall"]
  lines.append("| " + " | ".join(head) + " |")
  lines.append("|" + "---|" * len(head))
  for r in order:
    best = r.best(mode)
    status = r.status + (f": {r.reason}" if r.reason else "")
    cells = [r.id, *(repr(r.overrides[f]) if f in r.overrides else "" for f in fields),
             status.replace("|", "/"), *(_num(r.history.get(s)) for s in steps),
             _num(best[1] if best else None), _num(r.final()), _wall(r.wall_s)]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def plot(m: dict, rows: list[Row], path: str) -> bool:
  """The final metric against each swept field; False where matplotlib is missing."""
  try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
  except ImportError:
    return False
  fields = _split_fields(_fields(m, rows), rows)[0]
  shown = [r for r in rows if r.status in ("done", "stopped") and r.final() is not None]
  if not fields or not shown:
    return False
  fig, axes = plt.subplots(1, len(fields), figsize=(4 * len(fields), 3.4), squeeze=False)
  for ax, f in zip(axes[0], fields):
    vals = [r.overrides.get(f) for r in shown]
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals)
    if numeric:
      xs = [float(v) for v in vals]
      if min(xs) > 0 and max(xs) / min(xs) >= 20:
        ax.set_xscale("log")
    else:
      cats = sorted({repr(v) for v in vals})
      xs = [cats.index(repr(v)) for v in vals]
      ax.set_xticks(range(len(cats)), cats, rotation=30, fontsize=8)
    for status, marker, face in (("done", "o", None), ("stopped", "^", "none")):
      pts = [(x, r.final()) for x, r in zip(xs, shown) if r.status == status]
      if pts:
        ax.scatter(*zip(*pts), marker=marker, facecolors=face, edgecolors="C0",
                   label=status if status == "stopped" else None)
    ax.set_xlabel(f)
    ax.set_ylabel(f"final {m['metric']}")
    ax.grid(alpha=0.3)
    if any(r.status == "stopped" for r in shown):
      ax.legend(fontsize=8)
  failed = sum(r.status == "failed" for r in rows)
  fig.suptitle(f"{m['metric']} ({m['mode']}) of {len(shown)} trials"
               + (f"; {failed} failed, not shown" if failed else ""), fontsize=10)
  fig.tight_layout()
  tmp = path + f".tmp.{os.getpid()}.png"
  fig.savefig(tmp, dpi=100)
  plt.close(fig)
  os.replace(tmp, path)
  return True


def _write_text(path: str, text: str) -> None:
  tmp = f"{path}.tmp.{os.getpid()}"
  with open(tmp, "w") as f:
    f.write(text)
  os.replace(tmp, path)


def write(workdir: str) -> list[Row]:
  """Rewrites results.csv, .md, .json and .png from the trials' records."""
  m = meta(workdir)
  rows = collect(workdir)
  _write_text(os.path.join(workdir, "results.csv"), to_csv(m, rows))
  _write_text(os.path.join(workdir, "results.md"), markdown(workdir, rows))
  _write_text(os.path.join(workdir, "results.json"),
              json.dumps(to_json(m, rows), indent=1, default=str) + "\n")
  plot(m, rows, os.path.join(workdir, "results.png"))
  return rows


__all__ = ["Row", "collect", "markdown", "meta", "plot", "ranked", "to_csv", "to_json", "write"]
