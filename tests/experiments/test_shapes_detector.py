"""The shapes detector reads real renders back exactly and stays right under noise."""

import json

import numpy as np
import pytest

from diffusion_jax.data import shapes
from experiments import shapes_detector

NOISE_STD = 20.0  # Gaussian, on the 0..255 scale (~8% of the range), per channel.


def attributes(detections) -> list[tuple]:
  return sorted(tuple(d[:4]) for d in detections)


def two_shape_examples(split: str, n: int) -> list[dict]:
  out, i = [], 0
  while len(out) < n:
    ex = shapes.example(split, i)
    if ex["num_shapes"] == 2:
      out.append(ex)
    i += 1
  return out


def test_every_single_shape_phrase_is_detected_exactly():
  wrong = [p for p in shapes.PHRASES
           if attributes(shapes_detector.detect(shapes.render([p]))) != [p]]
  assert not wrong, f"{len(wrong)} of {len(shapes.PHRASES)} misread, e.g. {wrong[:3]}"


@pytest.mark.parametrize("split", ["train", "test"])
def test_two_shape_examples_are_detected_exactly(split):
  for ex in two_shape_examples(split, 60):
    expected = sorted(shapes_detector.parse_caption(ex["caption"]))
    assert attributes(shapes_detector.detect(ex["image"])) == expected, ex["caption"]


def test_real_examples_score_fully_right():
  examples = [shapes.example(split, i) for split in ("train", "test") for i in range(100)]
  result = shapes_detector.score([e["image"] for e in examples], [e["caption"] for e in examples])
  assert result["all"]["images"] == 200
  assert result["one_shape"]["images"] + result["two_shapes"]["images"] == 200
  assert result["all"]["shapes"] == sum(e["num_shapes"] for e in examples)
  for group in ("all", "one_shape", "two_shapes"):
    for key in ("fully_right", "count_right", *shapes_detector.ATTRIBUTES):
      assert result[group][key] == 1.0, (group, key)


def test_gaussian_noise_keeps_scores_high():
  examples = [shapes.example(split, i) for split in ("train", "test") for i in range(100)]
  images = shapes_detector.add_noise(np.stack([e["image"] for e in examples]), NOISE_STD, seed=1)
  assert np.abs(images.astype(float) - np.stack([e["image"] for e in examples])).mean() > 5
  result = shapes_detector.score(images, [e["caption"] for e in examples])
  for group in ("one_shape", "two_shapes"):
    assert result[group]["fully_right"] >= 0.95, result[group]


def test_jitter_blur_and_noise_keep_scores_high():
  # The training perturbations, with a seed the classifier never saw.
  rng = np.random.default_rng(123)
  examples = [shapes.example("test", i) for i in range(150)]
  images = [shapes_detector.perturb(e["image"], rng, max_noise=30.0) for e in examples]
  result = shapes_detector.score(images, [e["caption"] for e in examples])
  assert result["all"]["fully_right"] >= 0.95, result["all"]


@pytest.mark.parametrize("index, replacement", [(0, "large"), (1, "green"), (2, "circle"),
                                                (3, "in the center")])
def test_a_wrong_attribute_is_scored_wrong(index, replacement):
  truth = ("small", "red", "square", "on the left")
  told = list(truth)
  told[index] = replacement
  result = shapes_detector.score([shapes.render([truth])], [shapes.phrase_text(*told)])["all"]
  assert result["fully_right"] == 0.0
  for i, attribute in enumerate(shapes_detector.ATTRIBUTES):
    assert result[attribute] == (0.0 if i == index else 1.0), attribute


def test_scores_by_value_credit_each_described_value():
  right = ("small", "red", "square", "on the left")
  wrong_colour = ("large", "blue", "circle", "on the right")
  images = [shapes.render([right]), shapes.render([("large", "green", "circle", "on the right")])]
  result = shapes_detector.score_by_value(images, [shapes.phrase_text(*right),
                                                   shapes.phrase_text(*wrong_colour)])
  assert result["position=on the left"] == {"shapes": 1, "fully_right": 1.0, "size": 1.0,
                                            "color": 1.0, "shape": 1.0, "position": 1.0}
  assert result["color=blue"]["fully_right"] == 0.0 and result["color=blue"]["color"] == 0.0
  assert result["shape=circle"]["shape"] == 1.0 and result["shape=circle"]["fully_right"] == 0.0
  assert "color=green" not in result  # Only described values are scored.
  assert len(result) == 8


def test_an_extra_or_missing_shape_is_not_fully_right():
  a = ("large", "blue", "triangle", "at the top")
  b = ("small", "yellow", "circle", "at the bottom")
  both = shapes.render([a, b])
  one = shapes_detector.score([both], [shapes.caption([a])])["all"]
  assert one["fully_right"] == 0.0 and one["count_right"] == 0.0
  assert one["color"] == one["shape"] == one["size"] == one["position"] == 1.0
  two = shapes_detector.score([shapes.render([a])], [shapes.caption([a, b])])["all"]
  assert two["fully_right"] == 0.0 and two["shapes"] == 2
  assert two["color"] == 0.5  # The missing shape counts wrong on every attribute.


def test_an_all_black_image_detects_nothing():
  black = np.zeros((32, 32, 3), np.uint8)
  assert shapes_detector.detect(black) == []
  result = shapes_detector.score([black], ["a small red circle in the center"])["all"]
  assert result["fully_right"] == 0.0 and result["color"] == 0.0


def test_specks_are_dropped_as_noise():
  phrase = ("small", "white", "circle", "on the left")
  image = shapes.render([phrase])
  image[2:4, 28:30] = 255  # A bright 2x2 speck, far below the smallest shape's area.
  assert attributes(shapes_detector.detect(image)) == [phrase]
  image[2:8, 26:32] = 255  # 6x6: as large as a small circle, so it counts.
  assert len(shapes_detector.detect(image)) == 2


def test_parse_caption_accepts_the_grammar():
  for split in ("train", "test"):
    for i in range(50):
      ex = shapes.example(split, i)
      parsed = shapes_detector.parse_caption(ex["caption"])
      assert shapes.caption(parsed) == ex["caption"]
      assert len(parsed) == ex["num_shapes"]


@pytest.mark.parametrize("text", [
    "",
    "a red circle in the center",  # No size.
    "a small red circle",  # No position.
    "a small purple circle in the center",  # Not a colour of the dataset.
    "a small red hexagon in the center",
    "a small red circle in the middle",
    "the small red circle in the center",
    "a small red circle in the center ",
    "A small red circle in the center",
    "a  small red circle in the center",
    "a small red circle on the left and",
    "a small red circle on the left, a large blue square on the right",
    "a small red circle on the left and a large blue square at the top",  # Not opposite.
    "a small red circle on the left and a large blue square on the left",
    "a small red circle at the top and a small red circle at the bottom and "
    "a small red circle on the left",
])
def test_parse_caption_rejects_text_outside_the_grammar(text):
  with pytest.raises(ValueError):
    shapes_detector.parse_caption(text)


def test_detection_is_deterministic():
  x1, y1 = shapes_detector.training_set(num_perturbed=3, seed=7)
  x2, y2 = shapes_detector.training_set(num_perturbed=3, seed=7)
  np.testing.assert_array_equal(x1, x2)
  np.testing.assert_array_equal(y1, y2)
  assert sorted(set(y1.tolist())) == [0, 1, 2]


def test_cli_scores_an_npz(tmp_path, capsys):
  examples = [shapes.example("test", i) for i in range(20)]
  images = np.stack([e["image"] for e in examples])
  prompts = np.array([e["caption"] for e in examples])
  images[0] = 0  # One blank image: 19 of 20 fully right.
  path = tmp_path / "samples.npz"
  np.savez(path, images=images, prompts=prompts)
  assert shapes_detector.main([f"--npz={path}"]) == 0
  result = json.loads(capsys.readouterr().out)
  assert result["all"]["images"] == 20
  assert result["all"]["fully_right"] == pytest.approx(19 / 20)
  np.savez(path, images=images.astype(np.float32), prompts=prompts)
  assert shapes_detector.main([f"--npz={path}"]) == 2
