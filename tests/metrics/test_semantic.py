"""MeanIoU against a NumPy confusion matrix."""
import numpy as np
import pytest
import tensorflow as tf

from deeplab_axial.metrics import MeanIoU

NUM_CLASSES, IGNORE = 5, 255


def numpy_miou(y_true, y_pred):
  """mIoU over classes present in the ground truth or the prediction (IoU = TP/(TP+FP+FN))."""
  y_true, y_pred = y_true.ravel(), y_pred.ravel()
  labelled = y_true != IGNORE
  y_true, y_pred = y_true[labelled], y_pred[labelled]
  ious = np.zeros(NUM_CLASSES)
  present = np.zeros(NUM_CLASSES, bool)
  for c in range(NUM_CLASSES):
    tp = np.sum((y_true == c) & (y_pred == c))
    union = np.sum((y_true == c) | (y_pred == c))
    present[c] = union > 0
    ious[c] = tp / union if union else 0.0
  return ious[present].mean(), ious


def _random_maps(rng, shape):
  # Class 4 never appears; ignore_label appears in both maps.
  y_true = rng.integers(0, 4, size=shape)
  y_pred = np.where(rng.random(shape) < 0.6, y_true, rng.integers(0, 4, size=shape))
  y_true[rng.random(shape) < 0.1] = IGNORE
  y_pred[rng.random(shape) < 0.05] = IGNORE
  return y_true.astype(np.int32), y_pred.astype(np.int32)


def test_streaming_matches_numpy():
  rng = np.random.default_rng(0)
  y_true, y_pred = _random_maps(rng, (4, 16, 24))
  metric = MeanIoU(NUM_CLASSES, IGNORE)
  metric.update_state(y_true[:3], y_pred[:3])
  metric.update_state(y_true[3], y_pred[3])  # [h, w] input.
  expected_miou, expected_per_class = numpy_miou(y_true, y_pred)
  result = metric.result()
  assert float(result["miou"]) == pytest.approx(expected_miou, abs=1e-12)
  np.testing.assert_allclose(result["per_class_iou"], expected_per_class, atol=1e-12)


def test_graph_mode_and_reset():
  rng = np.random.default_rng(1)
  y_true, y_pred = _random_maps(rng, (2, 8, 8))
  metric = MeanIoU(NUM_CLASSES, IGNORE)

  @tf.function
  def update(a, b):
    metric.update_state(a, b)

  update(tf.constant(y_true), tf.constant(y_pred))
  assert float(metric.result()["miou"]) == pytest.approx(numpy_miou(y_true, y_pred)[0])
  metric.reset_state()
  assert float(metric.result()["miou"]) == 0.0


def test_hand_checked():
  metric = MeanIoU(num_classes=3, ignore_label=255)
  metric.update_state(np.array([[0, 0, 1, 255]]), np.array([[0, 1, 1, 2]]))
  # Class 0: 1/2, class 1: 1/2, class 2 only predicted on an ignored pixel: absent.
  assert float(metric.result()["miou"]) == pytest.approx(0.5)


def test_distributed_equals_single(two_cpu_strategy):
  rng = np.random.default_rng(2)
  y_true, y_pred = _random_maps(rng, (4, 8, 8))
  with two_cpu_strategy.scope():
    metric = MeanIoU(NUM_CLASSES, IGNORE)
  dataset = tf.data.Dataset.from_tensor_slices((y_true, y_pred)).batch(4)

  @tf.function
  def step(batch):
    two_cpu_strategy.run(metric.update_state, args=batch)

  for batch in two_cpu_strategy.experimental_distribute_dataset(dataset):
    step(batch)
  assert float(metric.result()["miou"]) == pytest.approx(numpy_miou(y_true, y_pred)[0])


@pytest.mark.parametrize("y_true, y_pred, message", [
    (np.zeros((2, 4), np.int32), np.zeros((2, 4), np.float32), "y_pred must be an integer"),
    (np.zeros((2, 4), np.int32), np.zeros((4, 2), np.int32), "same shape"),
    (np.full((2, 4), 5, np.int32), np.zeros((2, 4), np.int32), r"y_true contains \[5\]"),
    (np.zeros((2, 4), np.int32), np.full((2, 4), -2, np.int32), r"y_pred contains \[-2\]"),
])
def test_bad_input(y_true, y_pred, message):
  with pytest.raises(ValueError, match=message):
    MeanIoU(NUM_CLASSES, IGNORE).update_state(y_true, y_pred)


def test_config_round_trip():
  metric = MeanIoU(NUM_CLASSES, IGNORE, name="miou")
  assert MeanIoU.from_config(metric.get_config()).get_config() == metric.get_config()
