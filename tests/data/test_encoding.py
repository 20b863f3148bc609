"""Panoptic label encoding: RGB id packing and validation."""
import numpy as np
import pytest
import tensorflow as tf

from deeplab_axial.data import encoding
from deeplab_axial.data import pipeline


def test_rgb_id_packing_matches_the_coco_formula():
  rgb = np.array([[[1, 2, 3], [255, 255, 255]]], np.uint8)
  np.testing.assert_array_equal(encoding.rgb_to_id(rgb),
                                [[1 + 2 * 256 + 3 * 65536, 256**3 - 1]])
  ids = np.array([[0, 255000 + 999, 65280, 12345678]])
  np.testing.assert_array_equal(encoding.rgb_to_id(encoding.id_to_rgb(ids)), ids)


def test_png_round_trip_is_lossless_in_numpy_and_tensorflow():
  rng = np.random.default_rng(0)
  panoptic = rng.integers(0, 256**3, (7, 9)).astype(np.int32)
  panoptic[0, 0] = 255 * 1000
  png = encoding.encode_panoptic_png(panoptic)
  np.testing.assert_array_equal(encoding.decode_panoptic_png(png), panoptic)
  np.testing.assert_array_equal(pipeline.decode_panoptic_png(tf.constant(png)).numpy(),
                                panoptic)


def test_out_of_range_ids_are_rejected():
  with pytest.raises(ValueError, match="ids must lie in"):
    encoding.id_to_rgb(np.array([[256**3]]))


@pytest.mark.parametrize("value, message", [
    (7 * 1000, "semantic ids \\[7\\]"),
    (1 * 1000 + 3, "stuff or void pixels carry instance ids"),
    (255 * 1000 + 1, "stuff or void pixels carry instance ids"),
])
def test_validate_panoptic_names_source_and_ids(value, message):
  panoptic = np.array([[2 * 1000 + 1, 255 * 1000], [0, value]])
  with pytest.raises(ValueError, match=message) as error:
    encoding.validate_panoptic(panoptic, num_classes=5, label_divisor=1000, ignore_label=255,
                               thing_class_ids=(2, 3), source="label.png")
  assert "label.png" in str(error.value)


def test_validate_panoptic_accepts_crowd_and_void():
  encoding.validate_panoptic(np.array([[2000, 2001, 255000, 4000]]), num_classes=5,
                             label_divisor=1000, ignore_label=255, thing_class_ids=(2,))
