"""Conditioning paths: shapes through the U-Net for every mix of conditions, the image
conditions' transforms, the tokenizer, text masking, and the data pipeline's text."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

from diffusion_jax.config import defaults as default
from diffusion_jax.conditioning import conditions
from diffusion_jax.conditioning.tokenizer import Tokenizer, TokenizerError, build_vocab
from diffusion_jax.config.errors import ConfigError
from diffusion_jax.data import pipeline, shapes
from diffusion_jax.models.layers import area_downsample
from diffusion_jax.models.unet import Cond, UNet, UNetConfig
from diffusion_jax.run import build, spec as spec_lib
from diffusion_jax.sampling import inputs
from diffusion_jax.training import state as state_lib
from tests.conftest import apply_overrides, tiny_overrides

SMALL = dict(ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(), num_groups=4,
             dropout=0.0, out_channels=3)


def _shapes(cfg: UNetConfig, cond: Cond, size=8, batch=2):
  model = UNet(cfg)
  x, t = jnp.zeros((batch, size, size, 3)), jnp.zeros((batch,))
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x, t, cond))
  return variables["params"], jax.eval_shape(lambda v: model.apply(v, x, t, cond), variables)


@pytest.mark.parametrize("name,fields,cond", [
    ("none", {}, Cond()),
    ("class", {"num_classes": 5}, Cond(labels=jnp.zeros((2,), jnp.int32))),
    ("image", {"cond_image_channels": 4, "cond_image_resolutions": (4,)},
     Cond(image=jnp.zeros((2, 8, 8, 4)))),
    ("tokens", {"text_vocab_size": 30, "text_max_len": 6, "text_width": 16, "text_heads": 2,
                "cross_attn_resolutions": (8, 4)}, Cond(tokens=jnp.zeros((2, 6), jnp.int32))),
    ("embeddings", {"text_emb_dim": 12, "text_width": 16, "cross_attn_resolutions": (4,)},
     Cond(text_emb=jnp.zeros((2, 5, 12)), text_mask=jnp.ones((2, 5), bool))),
    ("all", {"num_classes": 5, "cond_image_channels": 3, "text_vocab_size": 30,
             "text_max_len": 6, "text_width": 16, "text_heads": 2,
             "cross_attn_resolutions": (4,)},
     Cond(labels=jnp.zeros((2,), jnp.int32), image=jnp.zeros((2, 8, 8, 3)),
          tokens=jnp.zeros((2, 6), jnp.int32))),
])
def test_every_conditioning_path_has_the_right_shapes(name, fields, cond):
  params, out = _shapes(UNetConfig(**SMALL, **fields), cond)
  assert out.shape == (2, 8, 8, 3)
  assert ("text_encoder" in params) == (fields.get("text_vocab_size", 0) > 0)
  assert ("context" in params) == bool(fields.get("text_vocab_size") or fields.get("text_emb_dim"))
  assert ("label_emb" in params) == bool(fields.get("num_classes"))
  cross = [k for k in params if k.startswith("CrossAttnBlock")]
  # Down (1 block per level), middle, up (2 blocks per level) at each listed size.
  per_size = {8: 1 + 2, 4: 1 + 1 + 2}
  assert len(cross) == sum(per_size[r] for r in fields.get("cross_attn_resolutions", ()))


def test_missing_condition_is_a_clear_error():
  with pytest.raises(ValueError, match="token ids"):
    _shapes(UNetConfig(**SMALL, text_vocab_size=9, cross_attn_resolutions=(4,)), Cond())
  with pytest.raises(ValueError, match="3-channel conditioning image"):
    _shapes(UNetConfig(**SMALL, cond_image_channels=3), Cond(image=jnp.zeros((2, 8, 8, 1))))


def _perturbed(model, x, t, cond, seed=0):
  params = jax.jit(model.init)(jax.random.key(seed), x, t, cond)["params"]
  # Zero-initialised output layers would hide the conditions: perturb everything.
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
  return jax.tree.unflatten(tree, [p + 0.1 * jax.random.normal(k, p.shape)
                                   for p, k in zip(leaves, keys)])


def test_text_changes_the_output_and_padding_does_not():
  cfg = UNetConfig(**SMALL, text_emb_dim=6, text_width=16, cross_attn_resolutions=(4,))
  model = UNet(cfg)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(2, 8, 8, 3)), jnp.float32)
  t = jnp.full((2,), 0.5)
  emb = jnp.asarray(rng.normal(size=(2, 5, 6)), jnp.float32)
  mask = jnp.array([[1, 1, 1, 0, 0], [1, 1, 0, 0, 0]], bool)
  params = _perturbed(model, x, t, Cond(text_emb=emb, text_mask=mask))
  f = jax.jit(lambda e, m: model.apply({"params": params}, x, t, Cond(text_emb=e, text_mask=m)))
  base = f(emb, mask)
  # Whatever sits in padded positions is ignored...
  junk = emb.at[:, 3:].set(100.0)
  np.testing.assert_allclose(f(junk, mask), base, atol=1e-5)
  # ...and a real token's embedding is not.
  assert float(jnp.abs(f(emb.at[:, 0].set(3.0), mask) - base).max()) > 1e-3
  # The empty prompt (all masked) is a valid input: the null token alone.
  empty = f(emb, jnp.zeros_like(mask))
  assert bool(jnp.isfinite(empty).all()) and float(jnp.abs(empty - base).max()) > 1e-3


def test_query_positions_start_as_a_no_op_and_then_act():
  fields = dict(SMALL, text_emb_dim=6, text_width=16, cross_attn_resolutions=(8, 4))
  plain, placed = UNet(UNetConfig(**fields)), UNet(UNetConfig(**fields, cross_attn_positions=True))
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(2, 8, 8, 3)), jnp.float32)
  t = jnp.full((2,), 0.5)
  cond = Cond(text_emb=jnp.asarray(rng.normal(size=(2, 5, 6)), jnp.float32),
              text_mask=jnp.ones((2, 5), bool))
  params = _perturbed(plain, x, t, cond)
  with_pos = jax.jit(placed.init)(jax.random.key(0), x, t, cond)["params"]
  pos = {k: v["query_pos"] for k, v in with_pos.items() if k.startswith("CrossAttnBlock")}
  assert sorted({v.shape for v in pos.values()}) == [(16, 16), (64, 8)]  # (h*w, channels)
  assert len(pos) == 3 + 4 and all(not v.any() for v in pos.values())  # Zero at init.
  merged = {k: dict(v, query_pos=pos[k]) if k in pos else v for k, v in params.items()}
  base = plain.apply({"params": params}, x, t, cond)
  np.testing.assert_array_equal(placed.apply({"params": merged}, x, t, cond), base)
  moved = {k: dict(v, query_pos=v["query_pos"] + 0.5 * jnp.asarray(
      rng.normal(size=v["query_pos"].shape), jnp.float32)) if k in pos else v
      for k, v in merged.items()}
  assert float(jnp.abs(placed.apply({"params": moved}, x, t, cond) - base).max()) > 1e-3


def test_without_the_pooled_text_only_cross_attention_reads_it():
  fields = dict(SMALL, text_emb_dim=6, text_width=16, cross_attn_resolutions=(4,))
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(2, 8, 8, 3)), jnp.float32)
  t = jnp.full((2,), 0.5)
  mask = jnp.ones((2, 5), bool)
  a, b = (jnp.asarray(rng.normal(size=(2, 5, 6)), jnp.float32) for _ in range(2))
  for pooled in (True, False):
    model = UNet(UNetConfig(**fields, text_pooled=pooled))
    params = _perturbed(model, x, t, Cond(text_emb=a, text_mask=mask))
    assert ("pooled" in params["context"]) == pooled
    # Cross-attention's output projections back to zero, as at init.
    silent = {k: jax.tree.map(jnp.zeros_like, v) if k.startswith("CrossAttnBlock") else v
              for k, v in params.items()}
    f = jax.jit(lambda p, e: model.apply({"params": p}, x, t, Cond(text_emb=e, text_mask=mask)))
    assert float(jnp.abs(f(params, a) - f(params, b)).max()) > 1e-3
    # With cross-attention silent the text acts only through the pooled vector.
    assert (float(jnp.abs(f(silent, a) - f(silent, b)).max()) > 1e-3) == pooled


def test_image_condition_transforms():
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.uniform(-1, 1, (3, 8, 8, 3)), jnp.float32)
  low = area_downsample(x, 4)
  assert low.shape == (3, 2, 2, 3)
  np.testing.assert_allclose(low[:, 0, 0], x[:, :4, :4].mean(axis=(1, 2)), rtol=1e-6)
  up = conditions.upsample(low, 8)
  assert up.shape == (3, 8, 8, 3)
  # Upsampling a constant image gives the constant.
  np.testing.assert_allclose(conditions.upsample(jnp.full((1, 2, 2, 3), 0.3), 8), 0.3, atol=1e-6)
  gray = conditions.luminance(x)
  assert gray.shape == (3, 8, 8, 1)
  np.testing.assert_allclose(conditions.luminance(jnp.full((1, 2, 2, 3), -1.0)), -1.0, atol=1e-6)
  masks = conditions.box_masks(jax.random.key(0), 500, 32, 0.3, 0.6)
  hole = 1 - np.asarray(masks)[..., 0]
  rows, cols = hole.any(axis=2).sum(1), hole.any(axis=1).sum(1)
  assert rows.min() >= round(0.3 * 32) and rows.max() <= round(0.6 * 32)
  assert cols.min() >= round(0.3 * 32) and cols.max() <= round(0.6 * 32)
  assert (hole.sum((1, 2)) == rows * cols).all()  # One rectangle each.
  for name, spec in conditions.IMAGE_CONDITIONS.items():
    c = default.get_config().cond
    c.sr_factor = 4
    made = spec.degrade(x, jax.random.key(1), c)
    want = spec.shapes(8, 3, c)
    assert {k: v.shape[1:] for k, v in made.items()} == want, name
    assert spec.model_image(made, 8).shape == (3, 8, 8, spec.channels(3)), name


def test_projection_satisfies_each_image_condition_exactly():
  rng = np.random.default_rng(1)
  truth = jnp.asarray(rng.uniform(-1, 1, (2, 8, 8, 3)), jnp.float32)
  x = jnp.asarray(rng.uniform(-1, 1, (2, 8, 8, 3)), jnp.float32)  # Any sample.
  c = default.get_config().cond
  c.sr_factor = 4
  for name, spec in conditions.IMAGE_CONDITIONS.items():
    given = spec.degrade(truth, jax.random.key(2), c)
    again = spec.degrade(spec.project(x, given, c), jax.random.key(2), c)
    for k in given:
      np.testing.assert_allclose(again[k], given[k], atol=1e-5, err_msg=name)
    # And the sample was changed, but only as much as needed (not replaced by truth).
    assert float(jnp.abs(spec.project(x, given, c) - truth).max()) > 0.1, name


def test_tokenizer():
  vocab = build_vocab(["a large red circle", "A small blue square and a red circle"])
  assert vocab == sorted({"a", "large", "red", "circle", "small", "blue", "square", "and"})
  tok = Tokenizer(vocab, max_len=6)
  ids = tok.encode(["a red circle", ""])
  assert ids.shape == (2, 6) and (ids[1] == 0).all() and (ids[0, 3:] == 0).all()
  assert tok.decode(ids) == ["a red circle", ""]
  with pytest.raises(TokenizerError, match=r"outside the model's vocabulary: \['dog', 'purple'\]"):
    tok.encode(["a purple dog"])
  with pytest.raises(TokenizerError, match="at most 6"):
    tok.encode(["a red circle and a red circle"])


def test_pipeline_tokens_match_the_tokenizer(data_dir):
  c = default.get_config()
  c.data.name, c.data.image_size, c.data.channels, c.data.num_classes = (
      "shapes_captions/tiny", 32, 3, 0)
  c.data.split = "train"
  vocab, longest = pipeline.caption_vocab(c.data)
  assert vocab == shapes.vocabulary() and longest == 15
  tok = Tokenizer(vocab, 16)
  batch = next(pipeline.make_iterator(c.data, 8, 0, pipeline.TextSpec(tokenizer=tok)))
  assert batch["tokens"].shape == (8, 16) and batch["image"].shape == (8, 32, 32, 3)
  for caption in tok.decode(batch["tokens"]):
    assert shapes_detector_grammar(caption)


def shapes_detector_grammar(caption: str) -> bool:
  phrases = caption.split(" and ")
  known = {shapes.phrase_text(*p) for p in shapes.PHRASES}
  return 1 <= len(phrases) <= 2 and all(p in known for p in phrases)


class TinyEmbeddings(tfds.core.GeneratorBasedBuilder):
  """8x8 images with precomputed (4, 6) text embeddings; the last rows are padding."""
  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(8, 8, 3)),
        "text_emb": tfds.features.Tensor(shape=(4, 6), dtype=np.float32)}))

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples(16)}

  def _generate_examples(self, n):
    rng = np.random.default_rng(0)
    for i in range(n):
      emb = rng.normal(size=(4, 6)).astype(np.float32)
      emb[1 + i % 3:] = 0  # 1-3 tokens.
      yield i, {"image": rng.integers(0, 255, (8, 8, 3), dtype=np.uint8), "text_emb": emb}


def test_precomputed_embeddings_train_end_to_end(tmp_path):
  builder = TinyEmbeddings(data_dir=str(tmp_path))
  builder.download_and_prepare(file_format="array_record")
  c = apply_overrides(default.get_config(), tiny_overrides())
  c.data.channels, c.data.num_classes, c.model.out_channels, c.model.num_classes = 3, 0, 3, 0
  c.training.label_dropout, c.training.text_dropout = 0.0, 0.3
  c.model.text_emb_dim, c.model.text_width, c.model.cross_attn_resolutions = 6, 16, (4,)
  c.model.text_max_len = 4
  c.sample.text_guidance_scale = 2.0
  spec = spec_lib.parse(c, num_devices=1)
  c.data.name, c.data.data_dir = "tiny_embeddings", str(tmp_path)
  batch = next(pipeline.make_iterator(c.data, 8, 0, pipeline.TextSpec(emb_key="text_emb")))
  assert batch["text_emb"].shape == (8, 4, 6)
  np.testing.assert_array_equal(batch["text_mask"], np.any(batch["text_emb"] != 0, -1))
  assert 1 <= batch["text_mask"].sum(1).min() and batch["text_mask"].sum(1).max() <= 3
  model, tx = build.model(spec), build.optimizer_of(spec)
  state = state_lib.create_train_state(jax.random.key(0), model, tx, 8, 3)
  step = jax.jit(build.train_step(spec, model, tx))
  for _ in range(2):
    state, metrics = step(state, batch)
  assert np.isfinite(float(metrics["loss"])) and int(state.step) == 2


@pytest.mark.parametrize("over,message", [
    ({"cond.image": "blur"}, "cond.image='blur' is unknown"),
    ({"cond.image": "sr", "model.cond_image_channels": 3}, "gives 1 channels"),
    ({"cond.image": "sr", "model.cond_image_channels": 1, "cond.sr_factor": 3},
     "cond.sr_factor=3 must be >= 2 and divide"),
    ({"model.text_vocab_size": 9, "model.text_emb_dim": 4, "model.cross_attn_resolutions": (4,)},
     "exclusive"),
    ({"model.text_vocab_size": 9}, "needs model.cross_attn_resolutions"),
    ({"model.cross_attn_resolutions": (4,)}, "needs text"),
    ({"model.cross_attn_positions": True}, "needs model.cross_attn_resolutions"),
    ({"model.text_pooled": False}, "model.text_pooled=False needs text"),
    ({"sample.text_guidance_scale": 2.0}, "needs a model with text"),
    ({"model.text_vocab_size": 9, "model.cross_attn_resolutions": (4,),
      "sample.text_guidance_scale": 2.0}, "training.text_dropout > 0"),
    ({"training.image_dropout": 0.2}, "needs a model with an image condition"),
])
def test_bad_conditioning_configs(over, message):
  c = apply_overrides(default.get_config(), tiny_overrides())
  c = apply_overrides(c, over)
  with pytest.raises(ConfigError, match=message):
    spec_lib.parse(c, num_devices=1)


def test_sampling_labels_are_checked_against_the_classes(data_dir):
  spec = spec_lib.parse(apply_overrides(default.get_config(), tiny_overrides()), 1)
  got, _ = inputs.gather(spec, inputs.Given(labels=np.array([0, 9])), None)
  np.testing.assert_array_equal(got["label"], [0, 9])
  with pytest.raises(ConfigError, match=r"labels \[-1, 10\] are outside \[0, 10\)"):
    inputs.gather(spec, inputs.Given(labels=np.array([3, -1, 10])), None)
  c = apply_overrides(default.get_config(), {**tiny_overrides(), "data.num_classes": 0,
                                             "training.label_dropout": 0.0,
                                             "sample.guidance_scale": 1.0})
  with pytest.raises(ConfigError, match="not class-conditional"):
    inputs.gather(spec_lib.parse(c, 1), inputs.Given(labels=np.array([0])), None)
