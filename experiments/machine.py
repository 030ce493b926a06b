"""What the benchmarks write beside every timing: the CPU they ran on, and the JSON line
itself (printed, and appended to --out when given)."""

import json
import os
import platform
import re
import subprocess


def cpu_model() -> str:
  """lscpu's model name, family, model and widest vector extension, and the core count."""
  try:
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
  except OSError:
    return f"{platform.processor() or 'unknown'} ({os.cpu_count()} cores)"
  info = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
  get = lambda k: info.get(k, "?").strip()
  flags = get("Flags").split()
  vector = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
  return (f"{get('Model name')} (family {get('CPU family')}, model {get('Model')}, {vector}, "
          f"{os.cpu_count()} cores)")


def emit(record: dict, out: str | None = None) -> None:
  """Prints the record as one JSON line and appends it to `out` if given."""
  line = json.dumps(record)
  print(line, flush=True)
  if out:
    with open(out, "a") as f:
      f.write(line + "\n")


TIME_FIELDS = {"User time (seconds)": "user_s", "System time (seconds)": "system_s",
               "Percent of CPU this job got": "cpu_percent",
               "Elapsed (wall clock) time (h:mm:ss or m:ss)": "wall_s",
               "Maximum resident set size (kbytes)": "max_rss_gb", "Exit status": "exit_status"}


def time_report(text: str) -> dict:
  """The command and resources that `/usr/bin/time -v` reported at the end of text."""
  row = {"command": re.search(r'Command being timed: "(.*)"', text).group(1)}
  for label, key in TIME_FIELDS.items():
    value = re.search(re.escape(label) + r": (.*)", text).group(1).strip()
    if key == "wall_s":
      parts = [float(p) for p in value.split(":")]
      row[key] = round(sum(p * 60 ** i for i, p in enumerate(reversed(parts))), 2)
    elif key == "max_rss_gb":
      row[key] = round(int(value) * 1024 / 1e9, 2)
    elif key in ("cpu_percent", "exit_status"):
      row[key] = int(value.rstrip("%"))
    else:
      row[key] = float(value)
  return row
