"""What the benchmarks write beside every timing: the CPU they ran on, and the JSON line
itself (printed, and appended to --out when given)."""

import json
import os
import platform
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
