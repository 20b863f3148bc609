"""Tests of generate_panoptic_targets against hand-computed cases and a NumPy reference."""
import numpy as np
import pytest
import tensorflow as tf

from deeplab_axial.ops import generate_panoptic_targets
from tests.reference.panoptic_numpy import panoptic_targets_reference

DIVISOR = 1000
IGNORE = 255
THINGS = (11, 12)
COMMON = dict(label_divisor=DIVISOR, ignore_label=IGNORE, thing_class_ids=THINGS)


def _numpy(targets):
  return {k: v.numpy() for k, v in targets.items()}


def _random_panoptic(rng, height, width, num_segments=12):
  """Rectangles of random stuff/thing/crowd/void labels, some overlapping or touching."""
  panoptic = np.full((height, width), 1 * DIVISOR, np.int32)
  for index in range(num_segments):
    y0, x0 = rng.integers(0, height - 2), rng.integers(0, width - 2)
    y1, x1 = y0 + rng.integers(1, 14), x0 + rng.integers(1, 14)
    kind = rng.integers(0, 10)
    if kind < 6:
      label = rng.choice(THINGS) * DIVISOR + index + 1  # instance
    elif kind < 7:
      label = rng.choice(THINGS) * DIVISOR  # crowd
    elif kind < 8:
      label = IGNORE * DIVISOR  # void
    else:
      label = rng.integers(0, 5) * DIVISOR + rng.integers(0, 3)  # stuff, any instance id
    panoptic[y0:y1, x0:x1] = label
  return panoptic


def test_one_square_instance_hand_computed():
  panoptic = np.zeros((40, 40), np.int32)  # stuff class 0 everywhere
  panoptic[5:14, 8:17] = 11 * DIVISOR + 1  # 9x9 square: centre (9, 12), area 81
  targets = _numpy(generate_panoptic_targets(panoptic, **COMMON))

  heatmap = targets["center_heatmap"][..., 0]
  assert heatmap[9, 12] == 1.0
  np.testing.assert_allclose(heatmap[9, 14], np.exp(-4 / 128), rtol=1e-6)
  np.testing.assert_allclose(heatmap[12, 15], np.exp(-18 / 128), rtol=1e-6)
  np.testing.assert_allclose(heatmap[34, 12], np.exp(-625 / 128), rtol=1e-6)  # edge of 51²
  assert heatmap[35, 12] == 0.0 and heatmap[9, 38] == 0.0  # outside the 51x51 square
  assert heatmap.max() == 1.0

  offset = targets["center_offset"]
  np.testing.assert_array_equal(offset[5, 8], [4, 4])
  np.testing.assert_array_equal(offset[13, 16], [-4, -4])
  np.testing.assert_array_equal(offset[9, 12], [0, 0])
  assert not offset[:5].any() and not offset[:, 17:].any()

  square = np.zeros((40, 40), bool)
  square[5:14, 8:17] = True
  np.testing.assert_array_equal(targets["offset_weights"], square)
  np.testing.assert_array_equal(targets["semantic_weights"], np.where(square, 3.0, 1.0))
  np.testing.assert_array_equal(targets["semantic"], np.where(square, 11, 0))
  np.testing.assert_array_equal(targets["center_weights"], np.ones((40, 40)))


def test_large_instance_has_weight_one_and_centre_rounds_half_to_even():
  panoptic = np.zeros((70, 80), np.int32)
  panoptic[2:66, 3:69] = 12 * DIVISOR + 7  # 64x66 = 4224 px >= 4096; mean (33.5, 35.5)
  targets = _numpy(generate_panoptic_targets(panoptic, **COMMON))
  assert np.all(targets["semantic_weights"] == 1.0)
  heatmap = targets["center_heatmap"][..., 0]
  assert np.unravel_index(np.argmax(heatmap), heatmap.shape) == (34, 36)  # half to even
  np.testing.assert_array_equal(targets["center_offset"][2, 3], [32, 33])


def test_crowd_and_void():
  panoptic = np.full((20, 20), 2 * DIVISOR, np.int32)
  panoptic[0:5, 0:5] = 11 * DIVISOR  # crowd (thing, instance 0)
  panoptic[10:20, 10:20] = IGNORE * DIVISOR  # void
  crowd = np.zeros((20, 20), bool)
  crowd[0:5, 0:5] = True
  void = np.zeros((20, 20), bool)
  void[10:, 10:] = True

  targets = _numpy(generate_panoptic_targets(panoptic, **COMMON))
  assert not targets["center_heatmap"].any()
  assert not targets["center_offset"].any() and not targets["offset_weights"].any()
  np.testing.assert_array_equal(targets["center_weights"], ~(crowd | void))
  np.testing.assert_array_equal(targets["semantic"], np.where(crowd, 11, np.where(void, 255, 2)))
  np.testing.assert_array_equal(targets["semantic_weights"], np.where(void, 0.0, 1.0))

  ignored = _numpy(generate_panoptic_targets(panoptic, ignore_crowd_in_semantic=True,
                                             **COMMON))
  np.testing.assert_array_equal(ignored["semantic"], np.where(crowd | void, 255, 2))
  np.testing.assert_array_equal(ignored["semantic_weights"], np.where(crowd | void, 0.0, 1.0))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_numpy_reference(seed):
  rng = np.random.default_rng(seed)
  panoptic = _random_panoptic(rng, 37, 45)
  options = dict(sigma=2.0, small_instance_area=40, small_instance_weight=2.5,
                 ignore_crowd_in_semantic=bool(seed % 2), **COMMON)
  got = _numpy(generate_panoptic_targets(panoptic, **options))
  expected = panoptic_targets_reference(panoptic, **options)
  assert got.keys() == expected.keys()
  for name, value in expected.items():
    assert got[name].dtype == value.dtype, name
    np.testing.assert_allclose(got[name], value, rtol=1e-6, atol=1e-7, err_msg=name)


def test_batch_equals_per_image():
  rng = np.random.default_rng(3)
  # The same panoptic ids appear in several images and must stay separate instances.
  panoptics = np.stack([_random_panoptic(rng, 30, 26) for _ in range(3)])
  batched = _numpy(generate_panoptic_targets(panoptics, sigma=3.0, **COMMON))
  for index, panoptic in enumerate(panoptics):
    single = _numpy(generate_panoptic_targets(panoptic, sigma=3.0, **COMMON))
    for name, value in single.items():
      np.testing.assert_array_equal(batched[name][index], value, err_msg=name)


def test_inside_tf_data_map_with_static_shapes():
  rng = np.random.default_rng(4)
  panoptics = np.stack([_random_panoptic(rng, 24, 32) for _ in range(2)])
  dataset = tf.data.Dataset.from_tensor_slices(panoptics).map(
      lambda p: generate_panoptic_targets(p, sigma=2.0, **COMMON))
  assert dataset.element_spec["center_heatmap"].shape == (24, 32, 1)
  assert dataset.element_spec["center_offset"].shape == (24, 32, 2)
  assert dataset.element_spec["semantic"].shape == (24, 32)
  for panoptic, targets in zip(panoptics, dataset):
    expected = panoptic_targets_reference(panoptic, sigma=2.0, **COMMON)
    for name, value in expected.items():
      np.testing.assert_allclose(targets[name].numpy(), value, rtol=1e-6, atol=1e-7,
                                 err_msg=name)


def test_unknown_spatial_shape_in_tf_function():
  function = tf.function(lambda p: generate_panoptic_targets(p, sigma=2.0, **COMMON),
                         input_signature=[tf.TensorSpec([None, None, None], tf.int32)])
  panoptic = _random_panoptic(np.random.default_rng(5), 21, 19)
  got = _numpy(function(panoptic[None]))
  expected = panoptic_targets_reference(panoptic, sigma=2.0, **COMMON)
  np.testing.assert_allclose(got["center_heatmap"][0], expected["center_heatmap"],
                             rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("panoptic, options, message", [
    (np.zeros((4, 4), np.float32), {}, "integer"),
    (np.zeros((1, 4, 4, 1), np.int32), {}, "shape"),
    (np.zeros((4, 4), np.int32), {"thing_class_ids": (11, 255)}, "ignore_label"),
    (np.zeros((4, 4), np.int32), {"label_divisor": 0}, "label_divisor"),
    (np.zeros((4, 4), np.int32), {"sigma": 0.0}, "sigma"),
])
def test_bad_arguments_raise_value_error(panoptic, options, message):
  with pytest.raises(ValueError, match=message):
    generate_panoptic_targets(panoptic, **{**COMMON, **options})
