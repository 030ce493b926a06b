"""Command line: python -m diffusion_jax.main --config=configs/digits.py --workdir=DIR.

  --mode=train   train (resuming from DIR's latest checkpoint), then sample;
  --mode=sample  write a sample set from DIR's latest checkpoint (EMA params), for
                 the conditions given by --labels, --prompt/--prompts_file, --cond
                 or --cascade_from (else taken from the dataset's sample.cond_split);
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
_PROMPT = flags.DEFINE_multi_string("prompt", None, "--mode=sample: a text prompt (repeatable).")
_PROMPTS_FILE = flags.DEFINE_string("prompts_file", None,
                                    "--mode=sample: a text file of prompts, one per line.")
_COND = flags.DEFINE_string("cond", None, "--mode=sample: conditioning images: an .npz "
                            "(keys lowres | gray | masked + mask, uint8) or a directory of PNGs.")
_CASCADE = flags.DEFINE_string("cascade_from", None, "--mode=sample with a super-resolution "
                               "model: the base model's workdir, whose samples are upsampled.")


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
  from diffusion_jax import sample_inputs, train, validate
  from diffusion_jax.data.pipeline import DataError
  import tensorflow as tf
  tf.config.set_visible_devices([], "GPU")  # tf.data only; keep accelerators for JAX.
  config, workdir, mode = _CONFIG.value, _WORKDIR.value, _MODE.value
  if config is None:
    _fail("--config is required, e.g. --config=configs/digits.py")
  labels = None
  sample_flags = {"--labels": _LABELS.value, "--prompt": _PROMPT.value,
                  "--prompts_file": _PROMPTS_FILE.value, "--cond": _COND.value,
                  "--cascade_from": _CASCADE.value}
  given_flags = [k for k, v in sample_flags.items() if v is not None]
  if given_flags and mode != "sample":
    _fail(f"{', '.join(given_flags)} appl{'ies' if len(given_flags) == 1 else 'y'} "
          "to --mode=sample only")
  if _PROMPT.value is not None and _PROMPTS_FILE.value is not None:
    _fail("give prompts with --prompt or --prompts_file, not both")
  try:
    if _LABELS.value is not None:
      try:
        labels = np.asarray([int(v) for v in _LABELS.value], np.int32)
      except ValueError:
        _fail(f"--labels must be integers, got {','.join(_LABELS.value)}")
    # The entry points below validate config, data and workdir before writing anything.
    validate.check_mode(mode)
    if mode == "train":
      train.train_and_evaluate(config, workdir)
    elif mode == "sample":
      prompts = _PROMPT.value
      if _PROMPTS_FILE.value is not None:
        prompts = sample_inputs.read_prompts(_PROMPTS_FILE.value)
      given = sample_inputs.Given(labels=labels, prompts=prompts, cond_path=_COND.value)
      train.sample_from_workdir(config, workdir, given, cascade_from=_CASCADE.value)
    else:
      from diffusion_jax import evaluate
      evaluate.evaluate_likelihood(config, workdir)
  except (validate.ConfigError, DataError, sample_inputs.InputError) as e:
    _fail(str(e))
  except FloatingPointError as e:  # Diverged: the last good checkpoint is kept.
    print(f"error: {e}", file=sys.stderr, flush=True)
    sys.exit(1)


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
