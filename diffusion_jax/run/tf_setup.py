"""How the command lines start TensorFlow, should it load: tfds prepares the bundled
datasets with it. Reading prepared data and writing TensorBoard events do not load it."""

import os


def configure() -> None:
  """Call before TensorFlow is imported. Its C++ log shows warnings and errors only.
  TensorFlow imports Keras as it loads (2-4 s per process on a 2-core CPU, in every
  process of a run, a pod or a sweep); TF_USE_LEGACY_KERAS=1 points that import at
  tf_keras, which this project does not install, so TensorFlow skips it. Values the
  user set are kept."""
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
