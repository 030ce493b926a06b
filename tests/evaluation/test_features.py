"""The feature networks and the reference cache: shipped weights load and match their
recorded training results, bad weight files name the layer, and the reference
statistics are cached by dataset version and network hash."""

import json
import os
import shutil

import numpy as np
import pytest

from diffusion_jax.evaluation import features, inception, reference
from diffusion_jax.run import spec as spec_lib
from tests.conftest import ROOT

OFFLINE = [n for n, net in features.FEATURE_NETS.items() if isinstance(net, features.SmallNet)]


@pytest.mark.parametrize("name", OFFLINE)
def test_shipped_networks_load_and_are_those_recorded(name):
  net = features.FEATURE_NETS[name]
  ex = net.load(name)
  with open(os.path.join(ROOT, "experiments", "results", "feature_nets.json")) as f:
    recorded = json.load(f)[name]
  assert ex.sha256 == recorded["sha256"] and recorded["feature_dim"] == net.dim
  images = np.random.default_rng(0).integers(0, 256, (5, net.image_size, net.image_size,
                                                      net.channels), np.uint8)
  out = features.extract(ex, images, batch_size=4)
  assert out["features"].shape == (5, net.dim) and np.isfinite(out["features"]).all()
  if net.num_classes:
    np.testing.assert_allclose(out["probs"].sum(1), 1.0, rtol=1e-5)
  # Padding the last batch changes nothing: each image's features are its own.
  np.testing.assert_allclose(features.extract(ex, images[4:], 4)["features"],
                             out["features"][4:], rtol=1e-5, atol=1e-6)


def test_a_wrong_weight_file_names_the_layer(tmp_path):
  net = features.FEATURE_NETS["digits-v1"]
  with np.load(os.path.join(features.WEIGHTS_DIR, "digits-v1.npz")) as f:
    flat = {k: f[k] for k in f.files}
  flat["params/conv1/kernel"] = flat["params/conv1/kernel"][..., :10]
  path = str(tmp_path / "bad.npz")
  np.savez(path, **flat)
  with pytest.raises(ValueError, match=r"layer params/conv1/kernel has shape \(3, 3, 32, 10\), "
                     r"the network expects \(3, 3, 32, 64\)"):
    features.read_weights(path, features.expected_shapes(net))
  flat["params/conv1/kernel"] = np.zeros((3, 3, 32, 64), np.float32)  # Edited: hash differs.
  np.savez(path, **flat)
  with pytest.raises(ValueError, match="differs from the stored"):
    features.read_weights(path, features.expected_shapes(net))


def test_missing_inception_weights_say_how_to_get_them():
  with pytest.raises(FileNotFoundError, match="convert_inception"):
    features.FEATURE_NETS["inception"].load("inception", "/nonexistent/inception_fid.npz")


def test_auto_picks_the_dataset_network():
  assert features.resolve("auto", "sklearn_digits") == "digits-v1"
  assert features.resolve("auto", "photo_patches/tiny") == "photos-v1"
  assert features.resolve("auto", "cifar10") == "inception"
  assert features.resolve("shapes-v1", "cifar10") == "shapes-v1"
  assert inception.NUM_FEATURES == features.FEATURE_NETS["inception"].dim


def test_reference_is_cached_by_version_and_hash(data_dir, capsys):
  from diffusion_jax.config import defaults
  data = spec_lib.parse(defaults.get_config(), 1).data
  ex = features.FEATURE_NETS["digits-v1"].load("digits-v1")
  first = reference.reference_features(data, "test[:50]", 0, ex, 64)
  assert not first.cached and os.path.exists(first.path) and len(first.features) == 50
  again = reference.reference_features(data, "test[:50]", 0, ex, 64)
  assert again.cached and again.path == first.path
  np.testing.assert_allclose(again.features, first.features, rtol=1e-6)
  # Another network's hash is another cache file.
  other = features.Extractor(ex.name, "0" * 64, ex.fn)
  assert reference.reference_features(data, "test[:50]", 0, other, 64).path != first.path
  # Only another dataset version's cache: a note, computed anew, the old file left alone.
  version_dir = os.path.dirname(first.path)
  old = os.path.join(os.path.dirname(version_dir), "0.9.0", os.path.basename(first.path))
  os.makedirs(os.path.dirname(old))
  shutil.move(first.path, old)
  before = os.stat(old).st_mtime_ns
  capsys.readouterr()
  fresh = reference.reference_features(data, "test[:50]", 0, ex, 64,
                                       note=lambda m: print(m))
  assert "exist only for another version" in capsys.readouterr().out
  assert not fresh.cached and fresh.path == first.path and os.stat(old).st_mtime_ns == before
  np.testing.assert_allclose(fresh.features, first.features, rtol=1e-6)
