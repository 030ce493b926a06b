"""Re-runs a recorded result and compares: python -m diffusion_jax.reproduce NAME [--quick].

  python -m diffusion_jax.reproduce --list             the registry's entries
  python -m diffusion_jax.reproduce NAME               re-run NAME, print expected vs
                                                       obtained; exit 1 outside tolerance
  python -m diffusion_jax.reproduce NAME --quick       its shrunk variant (minutes on a CPU)
  python -m diffusion_jax.reproduce NAME --record      re-run and record what it obtains
  python -m diffusion_jax.reproduce NAME --dry_run     print its commands and expectations
  python -m diffusion_jax.reproduce --tables [--check] write (or check) the README tables

The registry (experiments/results.json) lists each recorded result: its config and
overrides, the commands that produce it, the output file and keys it is read from,
the expected values with their tolerances, and the hardware, wall time and commit of
the measurement. The README's result tables are generated from it (--tables), so every
number they show was recorded by a run. Commands run in the repository root with
{workdir} and {out} set to fresh directories (or --workdir's), {config} to the entry's
config and {overrides} to its overrides as --config.<field>=<value> flags;
`python -m diffusion_jax.main ...` runs in this process, anything else as a subprocess.
"""

import argparse
import datetime
import glob
import json
import math
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REGISTRY = os.path.join(ROOT, "experiments", "results.json")
# Files whose generated tables --tables writes: <!-- registry:ID --> ... <!-- /registry:ID -->.
TABLE_FILES = ("README.md", os.path.join("experiments", "README.md"),
               os.path.join("docs", "evaluation.md"), os.path.join("docs", "reproducing.md"))


class RegistryError(Exception):
  """A registry or entry that cannot be run: one line."""


# --- The registry.

def load_registry(path: str = REGISTRY) -> dict:
  if not os.path.exists(path):
    raise RegistryError(f"no results registry at {path}: run from a checkout of the "
                        "repository, or pass --registry")
  try:
    with open(path) as f:
      registry = json.load(f)
  except ValueError as e:
    raise RegistryError(f"{path} is not valid JSON: {e}") from None
  entries = registry.get("entries")
  if not isinstance(entries, dict):
    raise RegistryError(f"{path} has no \"entries\" object")
  for name, entry in entries.items():
    check_entry(name, entry, path)
  return registry


def check_entry(name: str, entry: dict, path: str) -> None:
  where = f"{path}: entry {name!r}"
  for field in ("title", "commands", "output", "results"):
    if field not in entry:
      raise RegistryError(f"{where} has no {field!r}")
  if not entry["commands"] or not all(isinstance(c, str) for c in entry["commands"]):
    raise RegistryError(f"{where}: 'commands' must be a list of command lines")
  for variant, spec in (("", entry), ("quick.", entry.get("quick") or {})):
    for metric, r in (spec.get("results") or {}).items():
      if "tolerance" not in r or not isinstance(r["tolerance"], (int, float)) or r["tolerance"] < 0:
        raise RegistryError(f"{where}: {variant}results.{metric} needs a tolerance >= 0")


def entry_of(registry: dict, name: str) -> dict:
  entries = registry["entries"]
  if name not in entries:
    raise RegistryError(f"unknown registry entry {name!r}; known: {sorted(entries)}")
  return entries[name]


def variant(entry: dict, quick: bool) -> dict:
  """The entry's overrides, results and measurement for the full run or --quick."""
  if not quick:
    return {"overrides": entry.get("overrides", {}), "results": entry["results"],
            "measured": entry.get("measured"), "output": entry["output"]}
  q = entry.get("quick")
  if q is None:
    raise RegistryError("this entry has no --quick variant; run it without --quick")
  return {"overrides": {**entry.get("overrides", {}), **q.get("overrides", {})},
          "results": q["results"], "measured": q.get("measured"),
          "output": q.get("output", entry["output"])}


def _fmt_value(v) -> str:
  if isinstance(v, tuple):
    return "(" + ",".join(str(x) for x in v) + ("," if len(v) == 1 else "") + ")"
  if isinstance(v, list):
    return _fmt_value(tuple(v))
  return str(v)


def commands(entry: dict, quick: bool, workdir: str = "{workdir}", out: str = "{out}") -> list[str]:
  """The entry's command lines with the placeholders filled."""
  v = variant(entry, quick)
  flags = " ".join(shlex.quote(f"--config.{k}={_fmt_value(val)}")
                   for k, val in v["overrides"].items())
  fill = {"workdir": workdir, "out": out, "config": entry.get("config", ""), "overrides": flags}
  return [" ".join(c.format(**fill).split()) for c in entry["commands"]]


# --- Running an entry.

def _get(data, key: str):
  for part in key.split("."):
    if isinstance(data, list):
      data = data[int(part)]
    elif isinstance(data, dict) and part in data:
      data = data[part]
    else:
      raise KeyError(key)
  return data


def _run_command(line: str) -> int:
  words = shlex.split(line)
  if words[:3] == ["python", "-m", "diffusion_jax.main"]:
    from diffusion_jax import main  # In process: the JAX runtime and compile cache stay warm.
    return main.run(["diffusion_jax.main", *words[3:]])
  if words[0] == "python":
    words[0] = sys.executable
  return subprocess.run(words, cwd=ROOT).returncode


class _Terminated:
  """SIGTERM while the commands run: the running command ends as it would alone (a
  training run saves a checkpoint and returns 0), and the rest are not run, so a
  half-trained model is never evaluated, compared or recorded."""

  def __init__(self):
    self.signalled, self._previous = False, None

  def _handler(self, signum, frame):
    self.signalled = True

  def __enter__(self) -> "_Terminated":
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handler)
    return self

  def __exit__(self, *exc) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def run(entry: dict, quick: bool, workdir: str, out: str) -> tuple[dict, float]:
  """Runs the entry's commands; (obtained value of each result, wall seconds)."""
  t0 = time.perf_counter()
  cwd = os.getcwd()
  os.chdir(ROOT)
  try:
    with _Terminated() as term:
      for line in commands(entry, quick, workdir, out):
        print(f"$ {line}", flush=True)
        code = _run_command(line)
        if code != 0:
          raise RegistryError(f"command failed (exit status {code}): {line}")
        if term.signalled:
          raise RegistryError(f"stopped by SIGTERM during: {line}; the later commands were "
                              "not run and nothing is compared or recorded")
  finally:
    os.chdir(cwd)
  wall = time.perf_counter() - t0
  pattern = variant(entry, quick)["output"].format(workdir=workdir, out=out)
  found = sorted(glob.glob(pattern if os.path.isabs(pattern) else os.path.join(ROOT, pattern)),
                 key=os.path.getmtime)
  if not found:
    raise RegistryError(f"the commands wrote no output {pattern}")
  with open(found[-1]) as f:
    data = json.load(f)
  obtained = {}
  for metric, r in variant(entry, quick)["results"].items():
    try:
      obtained[metric] = float(_get(data, r.get("key", metric)))
    except (KeyError, IndexError, ValueError, TypeError):
      raise RegistryError(f"output {found[-1]} has no value at {r.get('key', metric)!r}") from None
  return obtained, wall


def compare(results: dict, obtained: dict) -> tuple[list[str], bool]:
  """Lines "metric expected ± tol obtained ok|OUTSIDE" and whether all are within."""
  lines, ok = [], True
  for metric, r in results.items():
    expected, tol, got = r.get("expected"), r["tolerance"], obtained[metric]
    if expected is None:
      lines.append(f"  {metric:<14} expected (not recorded)   obtained {_num(got)}   NOT RECORDED")
      ok = False
      continue
    within = abs(got - expected) <= tol
    ok &= within
    lines.append(f"  {metric:<14} expected {_num(expected)} ± {tol:.3g}   obtained {_num(got)}   "
                 f"{'ok' if within else 'OUTSIDE TOLERANCE'}")
  return lines, ok


def _stored(value: float) -> float | int:
  """A value as recorded: counts exactly, measurements to 6 significant digits."""
  return int(value) if float(value).is_integer() else float(f"{value:.6g}")


def _num(value: float) -> str:
  return f"{int(value):,}" if float(value).is_integer() else f"{value:.6g}"


def measurement(wall: float) -> dict:
  from diffusion_jax.run import metadata
  hw = metadata.hardware()
  git = metadata.git_commit(ROOT)
  commit = (git["commit"][:12] + ("-dirty" if git["dirty"] else "")) if git else None
  return {"hardware": f"{hw['cpu']}, {hw['cpu_count']} cores ({hw['device_count']} "
                      f"{hw['platform']} device{'s' if hw['device_count'] > 1 else ''})"
          if hw["platform"] == "cpu" else f"{hw['device_count']} x {hw['device_kind']}",
          "wall_time_s": round(wall, 1), "commit": commit,
          "date": datetime.date.today().isoformat()}


def record(registry_path: str, name: str, quick: bool, obtained: dict, wall: float) -> None:
  """Writes the obtained values as the entry's expectations, with the measurement."""
  with open(registry_path) as f:
    registry = json.load(f)
  entry = registry["entries"][name]
  target = entry["quick"] if quick else entry
  for metric, value in obtained.items():
    target["results"][metric]["expected"] = _stored(value)
  target["measured"] = measurement(wall)
  target.pop("source", None)  # Measured now: no longer taken from an older output file.
  tmp = registry_path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(registry, f, indent=2, ensure_ascii=False)
    f.write("\n")
  os.replace(tmp, registry_path)


def source_values(entry: dict) -> dict:
  """The entry's results read from its `source`: an output file its commands wrote
  in an earlier session (kept in experiments/results/)."""
  path = os.path.join(ROOT, entry["source"])
  with open(path) as f:
    data = json.load(f)
  out = {}
  for metric, r in entry["results"].items():
    try:
      out[metric] = float(_get(data, r.get("key", metric)))
    except (KeyError, IndexError, ValueError, TypeError):
      raise RegistryError(f"{entry['source']} has no value at {r.get('key', metric)!r}") from None
  return out


def record_from_source(registry_path: str, name: str) -> dict:
  """Writes the values of the entry's source file as its expectations."""
  with open(registry_path) as f:
    registry = json.load(f)
  entry = registry["entries"][name]
  if not entry.get("source"):
    raise RegistryError(f"entry {name!r} has no source file")
  values = source_values(entry)
  for metric, value in values.items():
    entry["results"][metric]["expected"] = _stored(value)
  entry["measured"] = {"hardware": "the run that wrote the source file (CPU not recorded there)",
                       "wall_time_s": None, "commit": None, "date": None}
  tmp = registry_path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(registry, f, indent=2, ensure_ascii=False)
    f.write("\n")
  os.replace(tmp, registry_path)
  return values


# --- Tables generated from the registry.

def _fmt(value: float, tol: float, percent: bool = False) -> str:
  """`value` to the decimals its tolerance makes meaningful (one past its scale)."""
  scale = 100.0 if percent else 1.0
  if tol:
    decimals = max(0, 1 - math.floor(math.log10(tol * scale)))
  else:
    decimals = 0 if float(value).is_integer() else 4
  return f"{value * scale:,.{decimals}f}" + ("%" if percent else "")


def _result_text(entry: dict, quick: bool = False) -> str:
  v = variant(entry, quick)
  parts = []
  for metric, r in v["results"].items():
    label = r.get("label", metric)
    if r.get("expected") is None:
      parts.append(f"{label}: not measured")
    else:
      parts.append(f"{label} {_fmt(r['expected'], r['tolerance'], r.get('percent', False))}")
  return "; ".join(parts)


def _measured(results: dict) -> bool:
  return all(r.get("expected") is not None for r in results.values())


def _measured_text(m: dict | None) -> str:
  if not m:
    return "not measured"
  wall = m.get("wall_time_s")
  when = f", {wall / 60:.1f} min" if isinstance(wall, (int, float)) else ""
  commit = f", {m['commit']}" if m.get("commit") else ""
  return f"{m.get('hardware', '?')}{when}{commit}"


def render_table(registry: dict, table: str) -> str:
  """The markdown of generated table `table` ("readme": the README's results;
  "experiments": every entry with its command)."""
  entries = registry["entries"]
  if table == "readme":
    rows = ["| what | result | reproduce |", "|---|---|---|"]
    for name, e in entries.items():
      if not e.get("readme"):
        continue
      if _measured(e["results"]):
        rows.append(f"| {e['title']} | {_result_text(e)} | `python -m diffusion_jax.reproduce {name}` |")
      elif e.get("quick") and _measured(e["quick"]["results"]):
        # The full run is not measured yet: show the shrunk run's, saying so.
        rows.append(f"| {e['title']}: not measured yet; shrunk run ({e['quick']['title']}) | "
                    f"{_result_text(e, True)} | `python -m diffusion_jax.reproduce {name} --quick` |")
    return "\n".join(rows)
  if table == "experiments":
    rows = ["| entry | what | expected (± tolerance in the registry) | measured on, wall time, commit |",
            "|---|---|---|---|"]
    for name, e in entries.items():
      measured = _measured_text(e.get("measured"))
      if e.get("source"):
        measured += f"; from `{e['source']}`"
      rows.append(f"| `{name}` | {e['title']} | {_result_text(e)} | {measured} |")
      if e.get("quick"):
        rows.append(f"| `{name} --quick` | the same, shrunk: {e['quick'].get('title', '')} | "
                    f"{_result_text(e, True)} | "
                    f"{_measured_text(e['quick'].get('measured'))} |")
    return "\n".join(rows)
  if table.startswith("json:"):
    return _json_table(*table.split(":")[1:])
  if table.startswith("file:"):
    if not os.path.exists(os.path.join(ROOT, table.split(":", 1)[1])):
      raise RegistryError(f"generated table: output file {table.split(':', 1)[1]} does not exist")
    with open(os.path.join(ROOT, table.split(":", 1)[1])) as f:
      return f.read().strip()
  if table.startswith("commands:"):
    e = entry_of(registry, table.split(":", 1)[1])
    return "```bash\n" + "\n".join(commands(e, False, "runs/" + table.split(":", 1)[1],
                                            "experiments/results")) + "\n```"
  raise RegistryError(f"unknown generated table {table!r}")


def _cell(v) -> str:
  if v is None:
    return ""
  if isinstance(v, bool):
    return str(v)
  if isinstance(v, int):
    return f"{v:,}"
  if isinstance(v, float):
    # 4 significant digits, but whole numbers from 10,000 up (not 1.302e+04).
    return f"{v:,.0f}" if 1e4 <= abs(v) < 1e15 else f"{v:,.4g}"
  return str(v)


def _json_table(path: str, columns: str) -> str:
  """A table of an experiment's output file (.json or .jsonl): one row per object of a
  list, per line, or per object-valued key of an object (column `_key` names it); an
  object without object-valued keys is one row.
  Columns are keys or dotted paths; items without the last column are skipped."""
  if not os.path.exists(os.path.join(ROOT, path)):
    raise RegistryError(f"generated table: output file {path} does not exist")
  with open(os.path.join(ROOT, path)) as f:
    if path.endswith(".jsonl"):
      data = [json.loads(line) for line in f if line.strip()]
    else:
      data = json.load(f)
  if isinstance(data, dict):
    data = [{"_key": k, **v} for k, v in data.items() if isinstance(v, dict)] or [data]
  cols = columns.split(",")

  def value(item, col):
    try:
      return _get(item, col)
    except (KeyError, IndexError, ValueError):
      return None

  items = [it for it in data if value(it, cols[-1]) is not None]
  rows = ["| " + " | ".join("" if c == "_key" else c for c in cols) + " |",
          "|" + "---|" * len(cols)]
  rows += ["| " + " | ".join(_cell(value(it, c)) for c in cols) + " |" for it in items]
  return "\n".join(rows)


BLOCK = re.compile(r"(<!-- registry:(?P<id>[\w:.,/-]+) -->\n)(?P<body>.*?)(<!-- /registry:(?P=id) -->)",
                   re.S)


def generated(text: str, registry: dict) -> str:
  """`text` with every generated block re-rendered from the registry."""
  return BLOCK.sub(lambda m: m.group(1) + render_table(registry, m.group("id")) + "\n" + m.group(4),
                   text)


def tables(registry: dict, check: bool) -> list[str]:
  """Writes (or, with check, lists without writing) the files whose tables differ."""
  stale = []
  for rel in TABLE_FILES:
    path = os.path.join(ROOT, rel)
    with open(path) as f:
      text = f.read()
    new = generated(text, registry)
    if new != text:
      stale.append(rel)
      if not check:
        with open(path, "w") as f:
          f.write(new)
  return stale


# --- Command line.

def main(argv: list[str] | None = None) -> int:
  p = argparse.ArgumentParser(prog="python -m diffusion_jax.reproduce",
                              description=__doc__.splitlines()[0])
  p.add_argument("name", nargs="?", help="a registry entry")
  p.add_argument("--quick", action="store_true", help="run the entry's shrunk variant")
  p.add_argument("--record", action="store_true",
                 help="write the obtained values into the registry as the expectations")
  p.add_argument("--workdir", help="run directory for {workdir} (default: a fresh one)")
  p.add_argument("--registry", default=REGISTRY, help="the results registry (JSON)")
  p.add_argument("--from-source", action="store_true",
                 help="record the entry's expectations from its source output file")
  p.add_argument("--dry_run", action="store_true",
                 help="print the entry's commands and expected values; run nothing")
  p.add_argument("--list", action="store_true", help="list the entries")
  p.add_argument("--tables", action="store_true", help="write the generated README tables")
  p.add_argument("--check", action="store_true", help="with --tables: only check them")
  args = p.parse_args(argv)
  try:
    registry = load_registry(args.registry)
    if args.list:
      for name, e in registry["entries"].items():
        quick = " [--quick]" if e.get("quick") else ""
        print(f"{name}{quick}: {e['title']} ({_result_text(e)})")
      return 0
    if args.tables:
      stale = tables(registry, args.check)
      if args.check and stale:
        print(f"error: generated tables differ from the registry in {', '.join(stale)}; "
              "run `python -m diffusion_jax.reproduce --tables`", file=sys.stderr)
        return 1
      print(("stale: " if args.check else "updated: ") + (", ".join(stale) or "nothing"))
      return 0
    if not args.name:
      raise RegistryError("name a registry entry (see --list)")
    entry = entry_of(registry, args.name)
    if args.from_source:
      print(json.dumps(record_from_source(args.registry, args.name)))
      return 0
    v = variant(entry, args.quick)
    if args.dry_run:
      for line in commands(entry, args.quick, args.workdir or "WORKDIR", "OUT"):
        print(f"$ {line}")
      print(f"then reads {v['output'].format(workdir=args.workdir or 'WORKDIR', out='OUT')}: "
            f"{_result_text(entry, args.quick)}")
      return 0
    if args.workdir and os.path.exists(args.workdir) and os.listdir(args.workdir):
      raise RegistryError(f"--workdir {args.workdir!r} is not empty: reproduce starts "
                          "from scratch (nothing there is overwritten)")
    with tempfile.TemporaryDirectory(prefix="reproduce_") as tmp:
      workdir = args.workdir or os.path.join(tmp, "workdir")
      out = os.path.join(tmp, "out")
      os.makedirs(out)
      obtained, wall = run(entry, args.quick, workdir, out)
  except RegistryError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  title = entry["title"] + (" (--quick)" if args.quick else "")
  lines, ok = compare(v["results"], obtained)
  print(f"{args.name}: {title}\n" + "\n".join(lines)
        + f"\n  wall time {wall:.0f} s (recorded: {_measured_text(v['measured'])})")
  if args.record:
    record(args.registry, args.name, args.quick, obtained, wall)
    print(f"recorded in {args.registry}")
    return 0
  return 0 if ok else 1


if __name__ == "__main__":
  sys.exit(main())
