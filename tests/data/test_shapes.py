"""The bundled shapes_captions dataset: deterministic, grammatical, rendered as captioned."""

import numpy as np
import pytest

from diffusion_jax.config import defaults as default
from diffusion_jax.data import pipeline, shapes


def parse(caption: str) -> list[tuple]:
  out = []
  for phrase in caption.split(" and "):
    words = phrase.split()
    assert words[0] == "a"
    out.append((words[1], words[2], words[3], " ".join(words[4:])))
  return out


def test_examples_are_deterministic_and_independent_of_order():
  a = [shapes.example("train", i) for i in (5, 0, 3)]
  b = [shapes.example("train", i) for i in (5, 0, 3)]
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x["image"], y["image"])
    assert x["caption"] == y["caption"]
  assert shapes.example("train", 0)["caption"] != shapes.example("test", 0)["caption"] or \
      not np.array_equal(shapes.example("train", 0)["image"], shapes.example("test", 0)["image"])


@pytest.mark.parametrize("split", ["train", "test"])
def test_captions_follow_the_grammar_and_the_held_out_split(split):
  vocab = set(shapes.vocabulary())
  counts = {1: 0, 2: 0}
  for i in range(400):
    ex = shapes.example(split, i)
    parsed = parse(ex["caption"])
    counts[len(parsed)] += 1
    assert set(ex["caption"].split()) <= vocab
    assert ex["num_shapes"] == len(parsed)
    for k, (size, color, shape, position) in enumerate(parsed):
      assert size in shapes.SIZES and color in shapes.COLORS and shape in shapes.SHAPES
      assert position in shapes.POSITIONS
      assert tuple(ex["attributes"][k]) == (shapes.SIZES.index(size), list(shapes.COLORS).index(color),
                                            shapes.SHAPES.index(shape), list(shapes.POSITIONS).index(position))
    held = any(p in shapes.HELD_OUT for p in parsed)
    assert held == (split == "test")
    if len(parsed) == 2:
      assert (parsed[0][3], parsed[1][3]) in shapes.PAIRS + tuple(p[::-1] for p in shapes.PAIRS)
  assert counts[1] > 50 and counts[2] > 50
  assert len(shapes.HELD_OUT) == 21  # One phrase in ten of 210.


def test_every_attribute_value_is_held_out_somewhere():
  # A held-out set that always says "at the top" measures nothing about position.
  for k, values in enumerate((shapes.SIZES, shapes.COLORS, shapes.SHAPES, shapes.POSITIONS)):
    assert {p[k] for p in shapes.HELD_OUT} == set(values)
  # ...and every value stays in training: no attribute value is held out entirely.
  trained = set(shapes.PHRASES) - shapes.HELD_OUT
  for k, values in enumerate((shapes.SIZES, shapes.COLORS, shapes.SHAPES, shapes.POSITIONS)):
    assert {p[k] for p in trained} == set(values)


def test_rendering_matches_the_caption():
  colors = {tuple(v) for v in shapes.COLORS.values()} | {(0, 0, 0)}
  for size, color, shape, position in [("large", "red", "circle", "on the left"),
                                       ("small", "cyan", "triangle", "at the bottom"),
                                       ("large", "white", "square", "in the center")]:
    img = shapes.render([(size, color, shape, position)])
    assert {tuple(p) for p in img.reshape(-1, 3)} <= colors  # Pure colours only.
    mask = np.all(img == shapes.COLORS[color], axis=-1)
    rows, cols = np.nonzero(mask)
    cy, cx = shapes.POSITIONS[position]
    assert abs(cols.mean() + 0.5 - cx) < 1.0
    if shape != "triangle":
      assert abs(rows.mean() + 0.5 - cy) < 1.0
    else:  # Wider at the base: the centroid sits below the centre, top rows are narrow.
      assert rows.mean() + 0.5 > cy
      assert mask[rows.min()].sum() < mask[rows.max()].sum()
  small = np.any(shapes.render([("small", "red", "square", "in the center")]) > 0, -1).sum()
  large = np.any(shapes.render([("large", "red", "square", "in the center")]) > 0, -1).sum()
  assert large > 2.5 * small


def test_two_shapes_never_overlap():
  for pair in shapes.PAIRS:
    a = ("large", "red", "square", pair[0])
    b = ("large", "blue", "circle", pair[1])
    both = np.any(shapes.render([a, b]) > 0, -1).sum()
    assert both == np.any(shapes.render([a]) > 0, -1).sum() + np.any(shapes.render([b]) > 0, -1).sum()


def test_tiny_builder_prepares_offline_and_loads(tmp_path):
  cfg = default.get_config().data
  cfg.name, cfg.data_dir, cfg.num_classes = "shapes_captions/tiny", str(tmp_path), 0
  cfg.image_size = 32
  data = pipeline.load_split_numpy(cfg, "test")
  assert data["image"].shape == (128, 32, 32, 3) and data["image"].dtype == np.uint8
  again = [shapes.example("test", i)["image"] for i in range(128)]
  got = sorted(x.tobytes() for x in data["image"])
  assert got == sorted(x.tobytes() for x in again)
