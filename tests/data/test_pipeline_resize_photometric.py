"""`resize_long_side` (train and eval, predictions back to the original size) and
`augmentation.photometric` wired from the config into the panoptic pipeline."""
import numpy as np
import pytest
import tensorflow as tf

from deeplab_axial import config as config_lib
from deeplab_axial.data import pipeline
from tests.data.test_pipeline import IGNORE, INFO, write_records

# A 100 x 80 image (larger than the 65 x 65 eval crop), long side resized to 64:
# 64 x round(80 * 64 / 100) = 64 x 51.
HEIGHT, WIDTH, LONG_SIDE, CROP = 100, 80, 64, (65, 65)
RESIZED = (64, 51)


def blocky_label():
  """Stuff everywhere (no void), two thing instances on 20-pixel blocks."""
  panoptic = np.zeros((HEIGHT, WIDTH), np.int32)
  panoptic[20:60, 0:40] = 1 * 256 + 1
  panoptic[60:100, 40:80] = 2 * 256 + 1
  return panoptic


@pytest.fixture(scope="module", name="large_records")
def fixture_large_records(tmp_path_factory):
  label = blocky_label()
  return write_records(tmp_path_factory.mktemp("large"), [label]), label


def test_training_resizes_the_long_side_before_the_crop(large_records):
  pattern, _ = large_records
  dataset = pipeline.build_panoptic_dataset(
      pattern, INFO, is_training=True, batch_size=1, crop_size=CROP, min_scale=1.0,
      max_scale=1.0, scale_step=0.0, flip=False, seed=3, generate_targets=False,
      resize_long_side=LONG_SIDE)
  batch = next(iter(dataset))
  assert batch["image"].shape == (1, 65, 65, 3)
  # The whole resized image fits in the crop: every labelled pixel is one of its 64 x 51.
  labelled = batch["panoptic"][0].numpy() != IGNORE
  assert labelled.sum() == RESIZED[0] * RESIZED[1]
  rows, cols = np.nonzero(labelled)
  assert (rows.max() - rows.min() + 1, cols.max() - cols.min() + 1) == RESIZED


def test_evaluation_resizes_the_image_and_keeps_the_original_label(large_records):
  pattern, label = large_records
  dataset = pipeline.build_panoptic_dataset(
      pattern, INFO, is_training=False, batch_size=1, crop_size=CROP,
      generate_targets=False, resize_long_side=LONG_SIDE)
  batch = next(iter(dataset))
  assert batch["image"].shape == (1, 65, 65, 3)
  np.testing.assert_array_equal(batch["panoptic"][0].numpy(), label)
  assert (int(batch["height"][0]), int(batch["width"][0])) == (HEIGHT, WIDTH)
  assert (int(batch["resized_height"][0]), int(batch["resized_width"][0])) == RESIZED
  image = batch["image"][0].numpy()
  np.testing.assert_allclose(image[RESIZED[0]:], 127.5)
  np.testing.assert_allclose(image[:, RESIZED[1]:], 127.5)
  # The image encodes the label (R = class): away from edges the resized image shows the
  # class the original label has at the corresponding place.
  assert image[10, 10, 0] == pytest.approx(0, abs=1e-3)  # original (16, 16): stuff
  assert image[25, 12, 0] == pytest.approx(1, abs=1e-3)  # original (39, 19): class 1
  assert image[50, 40, 0] == pytest.approx(2, abs=1e-3)  # original (78, 63): class 2

  # A perfect prediction in the model frame (the label resized like the image and
  # padded to the crop) maps back to the original label.
  in_frame = tf.image.resize(label[..., None], RESIZED, method="nearest")[..., 0]
  in_frame = tf.pad(in_frame, [[0, 1], [0, CROP[1] - RESIZED[1]]], constant_values=-1)
  restored = pipeline.predictions_to_label_frame(in_frame[None], batch,
                                                 pad_value=IGNORE).numpy()[0]
  assert restored.shape == (HEIGHT, WIDTH)
  # Nearest-neighbour twice may move a block edge by one original pixel (1 / 0.64 < 2).
  mismatch = restored != label
  assert mismatch.mean() < 0.05
  edges = np.zeros_like(mismatch)
  for edge in (20, 60):
    edges[edge - 2:edge + 2, :] = True
  edges[:, 38:42] = True
  assert not (mismatch & ~edges).any()


def test_predictions_stay_as_they_are_without_resize():
  predictions = tf.zeros([1, 4, 5], tf.int32)
  batch = {"panoptic": tf.zeros([1, 4, 5], tf.int32), "height": [3], "width": [4]}
  assert pipeline.predictions_to_label_frame(predictions, batch) is predictions


def test_resize_predictions_batches_images_of_different_sizes():
  # Image 0: a 2 x 3 valid region restored to 4 x 6; image 1: 3 x 3 restored to 3 x 3.
  ids = np.full((2, 4, 4), -1, np.int32)
  ids[0, :2, :3] = [[1, 2, 3], [4, 5, 6]]
  ids[1, :3, :3] = np.arange(9).reshape(3, 3)
  restored = pipeline.resize_predictions_to_original(
      tf.constant(ids), tf.constant([[2, 3], [3, 3]]), tf.constant([[4, 6], [3, 3]]),
      [5, 7], pad_value=99).numpy()
  expected0 = np.full((5, 7), 99)
  expected0[:4, :6] = np.repeat(np.repeat([[1, 2, 3], [4, 5, 6]], 2, 0), 2, 1)
  expected1 = np.full((5, 7), 99)
  expected1[:3, :3] = np.arange(9).reshape(3, 3)
  np.testing.assert_array_equal(restored, np.stack([expected0, expected1]))
  # Float maps (logits) are resized bilinearly: a constant stays constant, channels kept.
  logits = tf.fill([2, 4, 4, 3], 2.5)
  restored = pipeline.resize_predictions_to_original(
      logits, tf.constant([[2, 3], [3, 3]]), tf.constant([[4, 6], [3, 3]]), [5, 7])
  assert restored.shape == (2, 5, 7, 3) and restored.dtype == tf.float32
  np.testing.assert_allclose(restored[0, :4, :6].numpy(), 2.5)
  np.testing.assert_allclose(restored[1, 3:].numpy(), 0.0)


def test_eval_crop_smaller_than_resize_long_side_is_refused(large_records):
  with pytest.raises(ValueError, match="resize_long_side"):
    pipeline.build_panoptic_dataset(large_records[0], INFO, is_training=False,
                                    batch_size=1, crop_size=(33, 65), resize_long_side=64)
  text = 'dataset { name: "shapes" crop_size: [33, 33] resize_long_side: 64 }'
  with pytest.raises(config_lib.ConfigError, match="eval.crop_size"):
    config_lib.parse_config(text, overrides=["eval.crop_size: [65, 33]"])


def _training_batch(pattern, photometric):
  config = config_lib.parse_config(
      'dataset { name: "shapes" crop_size: [10, 12] augmentation { min_scale_factor: 1.0 '
      f'max_scale_factor: 1.0 scale_factor_step: 0 horizontal_flip: false photometric: '
      f'{str(photometric).lower()} }} }}')
  options = pipeline.panoptic_options_from_config(config.dataset, is_training=True)
  dataset = pipeline.build_panoptic_dataset(pattern, INFO, is_training=True, batch_size=1,
                                            seed=5, generate_targets=False, **options)
  return next(iter(dataset))


def test_photometric_flag_changes_images_only_when_true(tmp_path):
  rng = np.random.default_rng(1)
  pixels = rng.integers(30, 220, (10, 12, 3)).astype(np.uint8)
  label = np.zeros((10, 12), np.int32)
  pattern = write_records(tmp_path, [label], images=[pixels])
  plain = _training_batch(pattern, photometric=False)
  np.testing.assert_allclose(plain["image"][0].numpy(), pixels, atol=1e-4)
  jittered = _training_batch(pattern, photometric=True)
  assert np.abs(jittered["image"][0].numpy() - pixels).mean() > 1.0
  np.testing.assert_array_equal(jittered["panoptic"][0].numpy(), label)
