"""Boundary ops against SciPy distance transforms, dilation and Sobel filters."""
import numpy as np
import pytest
import tensorflow as tf
from scipy import ndimage

from deeplab_axial.ops import boundaries


def _scipy_semantic_boundaries(labels, width, ignore_label=255):
  """Boundary iff the Euclidean distance to a differently-labelled pixel is <= width."""
  result = np.zeros(labels.shape, np.int32)
  for value in np.unique(labels):
    region = labels == value
    distance = ndimage.distance_transform_edt(region) if not region.all() else np.inf
    result[region & (distance <= width)] = 1
  result[labels == ignore_label] = ignore_label
  return result


@pytest.mark.parametrize("width", [1, 2, 3])
def test_semantic_boundaries_match_distance_transform(width):
  labels = np.random.choice([0, 1, 2, 255], size=[2, 13, 17], p=[.5, .3, .15, .05])
  labels = ndimage.median_filter(labels, size=3).astype(np.int32)  # blobs, not noise
  result = boundaries.semantic_boundaries(labels, 255, width).numpy()
  for image in range(2):
    np.testing.assert_array_equal(result[image],
                                  _scipy_semantic_boundaries(labels[image], width))


def test_semantic_boundaries_square_gives_band_and_works_in_tf_data():
  labels = np.zeros([12, 12], np.int32)
  labels[4:8, 4:8] = 1
  dataset = tf.data.Dataset.from_tensors(labels).map(
      lambda x: boundaries.semantic_boundaries(x, width=2))
  result = next(iter(dataset)).numpy()
  assert result.shape == (12, 12)
  np.testing.assert_array_equal(result[6, :], [0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0])
  assert result[0, 0] == 0 and result.sum() > 0


def test_semantic_boundaries_rejects_float_labels():
  with pytest.raises(ValueError, match="integer"):
    boundaries.semantic_boundaries(np.zeros([3, 3], np.float32))


def test_binary_dilation_and_class_boundaries_match_scipy():
  masks = np.random.rand(1, 15, 16, 2) > 0.9
  radius = 3
  yy, xx = np.mgrid[-radius:radius + 1, -radius:radius + 1]
  disk = yy**2 + xx**2 <= radius**2
  expected = np.stack([ndimage.binary_dilation(masks[0, ..., c], disk) for c in range(2)], -1)
  np.testing.assert_array_equal(boundaries.binary_dilation(masks, radius).numpy()[0], expected)
  blobs = np.zeros([1, 8, 8, 1], bool)
  blobs[0, 2:6, 1:8, 0] = True
  cross = ndimage.generate_binary_structure(2, 1)
  eroded = ndimage.binary_erosion(np.pad(blobs[0, ..., 0], 1, mode="edge"), cross)[1:-1, 1:-1]
  np.testing.assert_array_equal(boundaries.class_boundaries(blobs).numpy()[0, ..., 0],
                                blobs[0, ..., 0] & ~eroded)


def test_image_gradient_magnitude_matches_scipy_sobel():
  images = np.random.uniform(0, 255, size=[2, 9, 11, 3]).astype(np.float32)
  gray = images @ np.array([0.2989, 0.5870, 0.1140], np.float32)
  expected = np.stack([np.hypot(ndimage.sobel(g, axis=0, mode="mirror"),
                                ndimage.sobel(g, axis=1, mode="mirror")) for g in gray])
  expected /= 4 * np.sqrt(2) * 255
  result = boundaries.image_gradient_magnitude(images).numpy()[..., 0]
  np.testing.assert_allclose(result, expected, rtol=1e-4, atol=1e-6)
  assert result.max() <= 1.0
  flat = boundaries.image_gradient_magnitude(tf.fill([1, 5, 5, 3], 7.0)).numpy()
  np.testing.assert_array_equal(flat, 0.0)
  compiled = tf.function(boundaries.image_gradient_magnitude, jit_compile=True)
  np.testing.assert_allclose(compiled(images).numpy()[..., 0], result, atol=1e-6)
