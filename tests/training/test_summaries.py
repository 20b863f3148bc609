"""Tests for TensorBoard summaries, read back from the event files."""
import glob
import os

import numpy as np
import pytest
import tensorflow as tf

from deeplab_axial.data import datasets
from deeplab_axial.training import summaries

_INFO = datasets.get_dataset_info("shapes")
_SKY, _GROUND, _CIRCLE = (_INFO.class_names.index(n) for n in ("sky", "ground", "circle"))
_VOID = _INFO.ignore_label * _INFO.label_divisor


def _events(log_dir):
  """{tag: [(step, value proto)]} of every summary in `log_dir`."""
  events = {}
  for path in glob.glob(os.path.join(log_dir, "events.out.tfevents.*")):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        events.setdefault(value.tag, []).append((event.step, value))
  return events


def _decoded_images(value):
  """The PNGs of a tf.summary.image value (string tensor: width, height, *images)."""
  strings = tf.make_ndarray(value.tensor)
  return [tf.io.decode_png(s).numpy() for s in strings[2:]]


def _scene():
  """Two 6x4 examples: sky over ground with one circle in the ground truth."""
  ground_truth = np.full((2, 6, 4), _GROUND * _INFO.label_divisor, np.int32)
  ground_truth[:, :3] = _SKY * _INFO.label_divisor
  ground_truth[:, 4:, :2] = _CIRCLE * _INFO.label_divisor + 1
  predictions = np.full((2, 6, 4), _VOID, np.int32)
  images = np.arange(2 * 6 * 4 * 3, dtype=np.float32).reshape(2, 6, 4, 3) % 256
  return images, predictions, ground_truth


def test_panels_show_image_ground_truth_and_prediction_side_by_side(tmp_path):
  images, predictions, ground_truth = _scene()
  writer = tf.summary.create_file_writer(str(tmp_path))
  assert summaries.write_panoptic_images(writer, 7, images, predictions, ground_truth,
                                         _INFO, max_images=1) == 1
  events = _events(str(tmp_path))
  (step, value), = events[summaries.PANOPTIC_IMAGE_TAG]
  assert step == 7
  panel, = _decoded_images(value)
  assert panel.shape == (6, 3 * 4, 3) and panel.dtype == np.uint8
  np.testing.assert_array_equal(panel[:, :4], images[0].astype(np.uint8))
  truth, prediction = panel[:, 4:8], panel[:, 8:]
  # Rows 0-1 are sky and row 5, columns 2-3 ground, away from any border: class colours.
  np.testing.assert_array_equal(truth[:2], np.broadcast_to(_INFO.colormap[_SKY], (2, 4, 3)))
  np.testing.assert_array_equal(truth[5, 3], _INFO.colormap[_GROUND])
  # Rows 2 and 3 touch the sky/ground border: drawn white.
  np.testing.assert_array_equal(truth[2:4], np.full((2, 4, 3), 255))
  # The circle is a thing: its class colour shifted by at most 48 per channel.
  circle = truth[5, 0].astype(int)
  assert np.all(np.abs(circle - _INFO.colormap[_CIRCLE].astype(int)) <= 48)
  assert not np.array_equal(circle, _INFO.colormap[_GROUND])
  # An all-void prediction is black.
  np.testing.assert_array_equal(prediction, np.zeros((6, 4, 3)))


def test_max_images_limits_the_panels(tmp_path):
  images, predictions, ground_truth = _scene()
  writer = tf.summary.create_file_writer(str(tmp_path))
  assert summaries.write_panoptic_images(writer, 1, images, predictions, ground_truth,
                                         _INFO, max_images=3) == 2
  (_, value), = _events(str(tmp_path))[summaries.PANOPTIC_IMAGE_TAG]
  assert [p.shape for p in _decoded_images(value)] == [(6, 12, 3)] * 2
  with pytest.raises(ValueError, match="max_images must be a positive int, got 0"):
    summaries.write_panoptic_images(writer, 1, images, predictions, ground_truth, _INFO, 0)


def test_mismatched_shapes_name_the_argument():
  images, predictions, ground_truth = _scene()
  with pytest.raises(ValueError, match=r"panoptic_predictions must be \[batch, height, "):
    summaries.panoptic_comparison_panels(images, predictions[:, :5], ground_truth, _INFO)
  with pytest.raises(ValueError, match=r"images must be \[batch, height, width, 3\]"):
    summaries.panoptic_comparison_panels(images[..., :1], predictions, ground_truth, _INFO)


def test_write_scalars_writes_scalar_metrics_and_skips_per_class_arrays(tmp_path):
  writer = tf.summary.create_file_writer(str(tmp_path))
  summaries.write_scalars(writer, 12, {"pq": 0.625, "miou": np.float32(0.5),
                                       "per_class_pq": np.array([0.1, 0.2])})
  events = _events(str(tmp_path))
  assert sorted(events) == ["metrics/miou", "metrics/pq"]
  (step, value), = events["metrics/pq"]
  assert step == 12 and float(tf.make_ndarray(value.tensor)) == pytest.approx(0.625)
  with pytest.raises(ValueError, match=r"metrics\['pq'\] must be a number"):
    summaries.write_scalars(writer, 1, {"pq": "high"})


def test_sample_panoptic_predictions_runs_model_and_post_processing():
  images, _, ground_truth = _scene()
  dataset = tf.data.Dataset.from_tensor_slices(
      {"image": images.astype(np.uint8), "panoptic": ground_truth}).batch(2)
  seen = []

  def model_fn(batch):
    seen.append(batch.dtype)
    shape = tf.shape(batch)[:3]
    # Every pixel scores "sky" highest.
    logits = tf.one_hot(tf.fill(shape, _SKY), _INFO.num_classes)
    return {"semantic_logits": logits, "center_heatmap": tf.zeros(tf.concat([shape, [1]], 0)),
            "center_offset": tf.zeros(tf.concat([shape, [2]], 0))}

  def post_process_fn(semantic_probs, center_heatmap, center_offset):
    del center_heatmap, center_offset
    semantic = tf.argmax(semantic_probs, axis=-1, output_type=tf.int32)
    return {"panoptic": semantic * _INFO.label_divisor}

  sampled_images, predictions, truth = summaries.sample_panoptic_predictions(
      model_fn, post_process_fn, dataset, max_images=1)
  assert seen == [tf.float32]
  np.testing.assert_array_equal(sampled_images, images[:1].astype(np.uint8))
  np.testing.assert_array_equal(predictions, np.full((1, 6, 4), _SKY * _INFO.label_divisor))
  np.testing.assert_array_equal(truth, ground_truth[:1])
