"""Command line: python -m diffusion_jax.main --config=configs/digits.py --workdir=DIR.

  --mode=train   train (resuming from DIR's latest checkpoint), then sample;
  --mode=sample  write a sample set from DIR's latest checkpoint (EMA params);
  --mode=eval    bits/dim of a data split under DIR's latest checkpoint (config.eval).
Config fields are overridden with --config.<field>=<value> (unknown fields are errors).
"""

import os
import re
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402
import numpy as np  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and samples.")
_MODE = flags.DEFINE_string("mode", "train", "train | sample | eval")
_LABELS = flags.DEFINE_list("labels", None, "--mode=sample: class labels to sample, e.g. 0,0,7.")


def _fail(msg: str) -> None:
  print(f"error: {msg}", file=sys.stderr, flush=True)
  sys.exit(2)


def _one_line(e: BaseException) -> str:
  return " ".join(str(e).replace("\\'", "'").replace("\\n", " ").split())


def _parse_flags(argv):
  """absl parsing, with every flag or config error as one line."""
  try:
    rest = flags.FLAGS(argv)
    _ = _CONFIG.value and _CONFIG.value.seed  # Config files load lazily: load it now.
    return rest
  except flags.Error as e:
    lines = str(e).strip().splitlines()
    # A config file that raised: its last line names the exception and says why.
    _fail(f"{lines[0]} {lines[-1].strip()}" if "Traceback" in str(e) else _one_line(e))
  except OSError as e:
    _fail(_one_line(e))
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    overrides = [a for a in argv[1:] if a.startswith("--config.")]
    msg = re.sub("'+", "'", _one_line(e)).rstrip("'")
    _fail(f"bad config override ({' '.join(overrides)}): {msg}")


def main(argv):
  if not any(a.startswith(("--verbosity", "-v")) for a in sys.argv[1:]):
    logging.set_verbosity(logging.WARNING)  # orbax logs every file op at INFO.
  if len(argv) > 1:
    _fail(f"unexpected arguments: {' '.join(argv[1:])}")
  # Import after flag parsing: a bad flag fails fast, before JAX/TF start.
  from diffusion_jax import train, validate
  from diffusion_jax.data.pipeline import DataError
  import tensorflow as tf
  tf.config.set_visible_devices([], "GPU")  # tf.data only; keep accelerators for JAX.
  config, workdir, mode = _CONFIG.value, _WORKDIR.value, _MODE.value
  if config is None:
    _fail("--config is required, e.g. --config=configs/digits.py")
  labels = None
  try:
    if _LABELS.value is not None:
      try:
        labels = np.asarray([int(v) for v in _LABELS.value], np.int32)
      except ValueError:
        _fail(f"--labels must be integers, got {','.join(_LABELS.value)}")
      if mode != "sample":
        _fail("--labels applies to --mode=sample only")
    # The entry points below validate config, data and workdir before writing anything.
    validate.check_mode(mode)
    if mode == "train":
      train.train_and_evaluate(config, workdir)
    elif mode == "sample":
      train.sample_from_workdir(config, workdir, labels)
    else:
      from diffusion_jax import evaluate
      evaluate.evaluate_likelihood(config, workdir)
  except (validate.ConfigError, DataError) as e:
    _fail(str(e))
  except FloatingPointError as e:  # Diverged: the last good checkpoint is kept.
    print(f"error: {e}", file=sys.stderr, flush=True)
    sys.exit(1)


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
