"""Photometric ops against NumPy/colorsys references written from their definitions."""
import colorsys
import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from deeplab_axial import config as config_lib
from deeplab_axial.data import photometric
from deeplab_axial.protos import experiment_pb2

# ITU-R BT.601 luma, written out here rather than read from the module under test.
R, G, B = 0.299, 0.587, 0.114


@pytest.fixture(name="image")
def fixture_image():
  return np.random.default_rng(0).uniform(0, 255, (5, 7, 3)).astype(np.float32)


def numpy_luma(image):
  return R * image[..., 0:1] + G * image[..., 1:2] + B * image[..., 2:3]


def test_brightness_adds_delta_and_clips(image):
  out = photometric.adjust_brightness(tf.constant(image), 20.0).numpy()
  np.testing.assert_allclose(out, np.clip(image + 20.0, 0, 255), atol=1e-4)


@pytest.mark.parametrize("factor", [0.0, 0.6, 1.4])
def test_contrast_scales_around_the_mean_luma(image, factor):
  mean = numpy_luma(image.astype(np.float64)).mean()
  expected = np.clip(mean + factor * (image - mean), 0, 255)
  out = photometric.adjust_contrast(tf.constant(image), factor).numpy()
  np.testing.assert_allclose(out, expected, atol=1e-3)


@pytest.mark.parametrize("factor", [0.0, 0.5, 1.5])
def test_saturation_blends_with_grayscale(image, factor):
  gray = numpy_luma(image.astype(np.float64))
  expected = np.clip(gray + factor * (image - gray), 0, 255)
  out = photometric.adjust_saturation(tf.constant(image), factor).numpy()
  np.testing.assert_allclose(out, expected, atol=1e-3)


@pytest.mark.parametrize("delta", [0.1, -0.25, 0.5])
def test_hue_rotates_hsv_hue(image, delta):
  expected = np.empty_like(image)
  for index in np.ndindex(image.shape[:2]):
    h, s, v = colorsys.rgb_to_hsv(*(image[index] / 255.0))
    expected[index] = np.array(colorsys.hsv_to_rgb((h + delta) % 1.0, s, v)) * 255.0
  out = photometric.adjust_hue(tf.constant(image), delta).numpy()
  np.testing.assert_allclose(out, expected, atol=0.05)


def test_options_draw_factors_inside_their_ranges_and_stay_in_range(image):
  options = photometric.PhotometricOptions(brightness_delta=0.0, contrast_range=(1.0, 1.0),
                                           saturation_range=(0.0, 0.0), hue_delta=0.0)
  # Only saturation 0 is active: the result is the grayscale image whatever the seed.
  out = options.apply(tf.constant(image), tf.constant([3, 4])).numpy()
  np.testing.assert_allclose(out, np.repeat(numpy_luma(image), 3, -1), atol=1e-3)
  jittered = photometric.PhotometricOptions().apply(tf.constant(image), tf.constant([1, 2]))
  assert 0.0 <= float(tf.reduce_min(jittered)) and float(tf.reduce_max(jittered)) <= 255.0
  assert not np.allclose(jittered.numpy(), image, atol=1.0)


def test_options_validate():
  with pytest.raises(ValueError, match="contrast_range"):
    photometric.PhotometricOptions(contrast_range=(1.5, 1.0))
  with pytest.raises(ValueError, match="hue_delta"):
    photometric.PhotometricOptions(hue_delta=0.7)
  with pytest.raises(ValueError, match="brightness_delta"):
    photometric.PhotometricOptions(brightness_delta=-1.0)


def _flat(options):
  return np.hstack([np.ravel(v) for v in dataclasses.astuple(options)])


def test_dataclass_defaults_are_the_proto_defaults():
  from_proto = photometric.PhotometricOptions.from_config(experiment_pb2.AugmentationOptions())
  np.testing.assert_allclose(_flat(from_proto), _flat(photometric.PhotometricOptions()),
                             rtol=1e-6)


def test_from_config_reads_every_range():
  augmentation = experiment_pb2.AugmentationOptions(
      brightness_max_delta=10.0, contrast_min_factor=0.75, contrast_max_factor=1.25,
      saturation_min_factor=0.25, saturation_max_factor=2.0, hue_max_delta=0.125)
  assert photometric.PhotometricOptions.from_config(augmentation) == (
      photometric.PhotometricOptions(brightness_delta=10.0, contrast_range=(0.75, 1.25),
                                     saturation_range=(0.25, 2.0), hue_delta=0.125))


@pytest.mark.parametrize("override, field", [
    ("dataset.augmentation.hue_max_delta: 0.6", "hue_max_delta"),
    ("dataset.augmentation.contrast_max_factor: 0.25", "contrast_max_factor"),
    ("dataset.augmentation.saturation_min_factor: -1", "saturation_min_factor"),
    ("dataset.augmentation.brightness_max_delta: -3", "brightness_max_delta"),
])
def test_config_refuses_bad_ranges(override, field):
  text = 'dataset { name: "shapes" crop_size: [33, 33] }'
  with pytest.raises(config_lib.ConfigError, match=field):
    config_lib.parse_config(text, overrides=[override])
