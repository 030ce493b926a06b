"""The command lines start TensorFlow (tf.data, summaries) without importing Keras."""

import os
import subprocess
import sys

from tests.conftest import ROOT

PROBE = ("import sys; from diffusion_jax.run import tf_setup; tf_setup.configure(); "
         "import tensorflow as tf; tf.data.Dataset.range(3).batch(2); "
         "print(sorted({m.split('.')[0] for m in sys.modules} & {'keras', 'tf_keras'}))")


def probe(**env) -> str:
  clean = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
  r = subprocess.run([sys.executable, "-c", PROBE], env={**clean, **env}, cwd=ROOT,
                     capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-2000:]
  return r.stdout.strip().splitlines()[-1]


def test_tensorflow_starts_without_keras_unless_the_user_asks_for_it():
  assert probe() == "[]"
  # A value the user set is kept: TensorFlow then imports Keras as it loads.
  assert probe(TF_USE_LEGACY_KERAS="0") == "['keras']"
