"""The Flax FID Inception against pytorch-fid's, and the weight converter's checks.

The equality tests need the `fid-reference` extra and skip without it:

  pip install -e '.[test,fid-reference]'

(torch 2.13.0 CPU, torchvision 0.28.0, pytorch-fid 0.3.0; about 770 MB). Nothing is
downloaded at run time: pytorch-fid's network is built without its FID weights and
given random ones, which the converter then turns into the .npz the Flax model reads.
"""

import importlib

import numpy as np
import pytest

from tests.conftest import torch_reference

from diffusion_jax.evaluation import convert_inception, inception

REFERENCE_REASON = ("needs PyTorch, torchvision and pytorch-fid as reference: "
                    "pip install -e '.[fid-reference]'")


def import_pytorch_fid(module: str = "pytorch_fid.inception"):
  """Imports a pytorch-fid module, or skips the test."""
  torch_reference(REFERENCE_REASON)
  pytest.importorskip("pytorch_fid", reason=REFERENCE_REASON)
  return importlib.import_module(module)


def randomise_(net, seed: int = 0) -> None:
  """He-normal convolutions and random BatchNorm affine and running statistics.

  He scaling keeps activations O(1) through the 94 conv layers, so an absolute
  tolerance means something; random statistics keep BatchNorm from being the identity.
  """
  import torch
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for m in net.modules():
      if isinstance(m, torch.nn.Conv2d):
        m.weight.copy_(torch.randn(m.weight.shape, generator=g)
                       * (2.0 / m.weight[0].numel()) ** 0.5)
      elif isinstance(m, torch.nn.BatchNorm2d):
        c = m.num_features
        m.weight.copy_(0.5 + torch.rand(c, generator=g))
        m.bias.copy_(0.1 * torch.randn(c, generator=g))
        m.running_mean.copy_(0.1 * torch.randn(c, generator=g))
        m.running_var.copy_(0.5 + torch.rand(c, generator=g))
      elif isinstance(m, torch.nn.Linear):
        m.weight.copy_(torch.randn(m.weight.shape, generator=g) / m.in_features ** 0.5)
        m.bias.copy_(torch.randn(m.bias.shape, generator=g))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """pytorch-fid's InceptionV3([3]) and fc with random weights, and our converted copy."""
  pfi = import_pytorch_fid()
  import torch
  from torchvision.models.inception import Inception3
  with pytest.MonkeyPatch.context() as mp:
    # fid_inception_v3() downloads and loads the FID weights: build it without them.
    mp.setattr(pfi, "load_state_dict_from_url", lambda *a, **k: None)
    mp.setattr(Inception3, "load_state_dict", lambda self, *a, **k: None)
    net = pfi.fid_inception_v3()
  randomise_(net)
  pth = tmp_path_factory.mktemp("inception") / "random_inception.pth"
  torch.save(net.state_dict(), pth)
  with pytest.MonkeyPatch.context() as mp:
    # pytorch-fid's own loading path (strict load_state_dict) reads the saved file.
    mp.setattr(pfi, "load_state_dict_from_url", lambda *a, **k: torch.load(pth))
    model = pfi.InceptionV3([pfi.InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).eval()
  npz = pth.with_name("inception_fid.npz")
  convert_inception.main([f"--src={pth}", f"--dst={npz}"])
  weights = inception.load_inception(str(npz))
  return {"torch": torch, "model": model, "fc": net.fc.eval(), "weights": weights,
          "fn": inception.make_inception_fn(weights), "pth": pth}


@pytest.mark.parametrize("size", [299, 64])
def test_flax_inception_equals_pytorch_fid(reference, size):
  torch = reference["torch"]
  images = np.random.default_rng(size).uniform(0, 1, (2, size, size, 3)).astype(np.float32)
  with torch.no_grad():
    pool = reference["model"](torch.from_numpy(images).permute(0, 3, 1, 2))[0].flatten(1)
    logits = reference["fc"](pool)
    unbiased = pool @ reference["fc"].weight.T
  got = {k: np.asarray(v) for k, v in reference["fn"](images).items()}
  want = {"pool": pool.numpy(), "logits": logits.numpy(), "logits_unbiased": unbiased.numpy()}
  assert got["pool"].shape == (2, 2048) and got["logits"].shape == (2, 1008)
  assert want["pool"].std() > 0.5  # Not a degenerate network: the tolerance has meaning.
  for key in want:
    np.testing.assert_allclose(got[key], want[key], rtol=0, atol=1e-4, err_msg=key)


def test_converter_keeps_every_weight_and_hash(reference):
  weights = reference["weights"]
  model_params = sum(p.numel() for p in reference["model"].parameters())
  fc_params = sum(p.numel() for p in reference["fc"].parameters())
  assert inception.count_params() == model_params + fc_params == 23_850_960
  kernel = weights.variables["params"]["Mixed_6b"]["branch7x7_2"]["conv"]["kernel"]
  torch_kernel = reference["model"].blocks[2][4].branch7x7_2.conv.weight.detach().numpy()
  np.testing.assert_array_equal(kernel, torch_kernel.transpose(2, 3, 1, 0))
  assert len(weights.sha256) == 64


def test_converter_reads_the_legacy_pth_format(reference, tmp_path):
  # pytorch-fid's release file may predate torch's zip format (1.6): same weights, same hash.
  torch = reference["torch"]
  legacy = tmp_path / "legacy.pth"
  torch.save(torch.load(reference["pth"]), legacy, _use_new_zipfile_serialization=False)
  assert convert_inception.convert(str(legacy), str(tmp_path / "legacy.npz")) == \
      reference["weights"].sha256


@pytest.mark.parametrize("shape", [(40, 52), (310, 333), (299, 150)])
def test_resize_equals_torch_bilinear(shape):
  torch = pytest.importorskip("torch", reason=REFERENCE_REASON)
  images = np.random.default_rng(0).uniform(0, 1, (1,) + shape + (3,)).astype(np.float32)
  want = torch.nn.functional.interpolate(torch.from_numpy(images).permute(0, 3, 1, 2),
                                         size=(299, 299), mode="bilinear",
                                         align_corners=False).permute(0, 2, 3, 1).numpy()
  got = np.asarray(inception.preprocess(images, normalize=False))
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


# Without torch: the converter and the loader on numpy state dicts.

def _torch_name(flax_key: str) -> str:
  collection, *layer, leaf = flax_key.split("/")
  module = ".".join(layer)
  if module == "fc":
    return {"kernel": "fc.weight", "bias": "fc.bias"}[leaf]
  return module + {"kernel": ".weight", "scale": ".weight", "bias": ".bias",
                   "mean": ".running_mean", "var": ".running_var"}[leaf]


def fake_state_dict() -> dict[str, np.ndarray]:
  """A state dict of the FID Inception's names and shapes (zeros, small random fc)."""
  sd = {}
  for key, shape in inception.expected_shapes().items():
    name = _torch_name(key)
    sd[name] = np.zeros(convert_inception._torch_shape(name, shape), np.float32)
  sd["fc.bias"] = np.arange(1008, dtype=np.float32)
  sd["Conv2d_1a_3x3.bn.num_batches_tracked"] = np.array(0)
  return sd


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
  path = tmp_path_factory.mktemp("npz") / "inception_fid.npz"
  digest = convert_inception.save_npz(convert_inception.convert_state_dict(fake_state_dict()),
                                      str(path))
  return path, digest


def test_converted_file_loads_with_its_hash(converted):
  path, digest = converted
  weights = inception.load_inception(str(path))
  assert weights.sha256 == digest
  np.testing.assert_array_equal(weights.variables["params"]["fc"]["bias"], np.arange(1008))
  sd = fake_state_dict()
  sd["fc.bias"] = sd["fc.bias"] + 1
  assert inception.weights_hash(convert_inception.convert_state_dict(sd)) != digest


def test_missing_weight_files_are_named(tmp_path):
  missing = tmp_path / "nowhere.npz"
  with pytest.raises(FileNotFoundError, match="nowhere.npz.*" + inception.PT_WEIGHTS_NAME):
    inception.load_inception(str(missing))
  with pytest.raises(FileNotFoundError, match="absent.pth.*" + inception.PT_WEIGHTS_URL):
    convert_inception.load_torch_state_dict(str(tmp_path / "absent.pth"))
  with pytest.raises(SystemExit, match="absent.pth"):
    convert_inception.main([f"--src={tmp_path / 'absent.pth'}", f"--dst={missing}"])


def test_wrong_shape_names_the_layer():
  sd = fake_state_dict()
  sd["Mixed_6b.branch7x7_2.conv.weight"] = np.zeros((160, 160, 1, 7), np.float32)
  with pytest.raises(ValueError, match=r"Mixed_6b\.branch7x7_2\.conv\.weight.*\(128, 128, 1, 7\)"):
    convert_inception.convert_state_dict(sd)
  sd = fake_state_dict()
  sd["fc.weight"] = np.zeros((1000, 2048), np.float32)  # torchvision's ImageNet head.
  with pytest.raises(ValueError, match=r"fc\.weight"):
    convert_inception.convert_state_dict(sd)


def test_missing_or_unknown_tensors_are_named():
  sd = fake_state_dict()
  del sd["Mixed_7c.branch_pool.bn.running_var"]
  with pytest.raises(ValueError, match="1 layers.*Mixed_7c/branch_pool/bn/var"):
    convert_inception.convert_state_dict(sd)
  sd = fake_state_dict()
  sd["AuxLogits.fc.weight"] = np.zeros((1008, 768), np.float32)
  with pytest.raises(ValueError, match=r"AuxLogits\.fc\.weight"):
    convert_inception.convert_state_dict(sd)


def test_loader_checks_shapes_and_content(converted, tmp_path):
  path, _ = converted
  with np.load(path) as f:
    flat = {k: f[k] for k in f.files}
  layer = "params/Mixed_5c/branch5x5_2/conv/kernel"
  bad = dict(flat, **{layer: np.zeros((3, 3, 48, 64), np.float32)})
  np.savez(tmp_path / "shape.npz", **bad)
  with pytest.raises(ValueError, match=f"shape.npz: layer {layer}"):
    inception.load_inception(str(tmp_path / "shape.npz"))
  edited = dict(flat, **{"params/fc/bias": flat["params/fc/bias"] + 1})
  np.savez(tmp_path / "edited.npz", **edited)
  with pytest.raises(ValueError, match="content hash"):
    inception.load_inception(str(tmp_path / "edited.npz"))


def test_download_named_with_a_hash_is_checked(tmp_path):
  truncated = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
  truncated.write_bytes(b"partial download")
  with pytest.raises(ValueError, match="6726825d"):
    convert_inception.load_torch_state_dict(str(truncated))


def test_module_takes_any_image_size():
  import jax
  from flax import traverse_util
  variables = traverse_util.unflatten_dict(
      {k: jax.ShapeDtypeStruct(s, np.float32) for k, s in inception.expected_shapes().items()},
      sep="/")
  out = jax.eval_shape(inception.FIDInceptionV3().apply, variables,
                       jax.ShapeDtypeStruct((3, 64, 80, 3), np.float32))
  assert {k: v.shape for k, v in out.items()} == {
      "pool": (3, 2048), "logits": (3, 1008), "logits_unbiased": (3, 1008)}


def test_integer_images_are_refused():
  with pytest.raises(TypeError, match="uint8"):
    inception.preprocess(np.zeros((1, 8, 8, 3), np.uint8))


def test_inception_features_pads_the_last_batch():
  shapes = []

  def fn(images):
    shapes.append(images.shape)
    return {"pool": images.sum(axis=(1, 2, 3))[:, None], "logits": images[:, 0, 0, :]}

  images = np.random.default_rng(0).uniform(0, 1, (7, 4, 4, 3)).astype(np.float32)
  out = inception.inception_features(fn, images, batch_size=3, keys=("pool", "logits"))
  assert shapes == [(3, 4, 4, 3)] * 3  # One shape: a jitted fn compiles once.
  np.testing.assert_allclose(out["pool"][:, 0], images.sum(axis=(1, 2, 3)), rtol=1e-6)
  np.testing.assert_array_equal(out["logits"], images[:, 0, 0, :])
