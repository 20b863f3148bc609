"""BoundaryFScore against a SciPy (distance-transform) reference and hand cases."""
import numpy as np
import pytest
import tensorflow as tf
from scipy import ndimage

from deeplab_axial.metrics.boundary import BoundaryFScore


def _contour(mask):
  cross = ndimage.generate_binary_structure(2, 1)
  eroded = ndimage.binary_erosion(np.pad(mask, 1, mode="edge"), cross)[1:-1, 1:-1]
  return mask & ~eroded


def _scipy_counts(y_true, y_pred, num_classes, tolerance, ignore_label=255):
  """Per-class (pred matched, pred total, true matched, true total) via distance maps."""
  counts = np.zeros([4, num_classes])
  for true, pred in zip(y_true, y_pred):
    valid = true != ignore_label
    pred = np.where(valid, pred, -1)
    for c in range(num_classes):
      true_contour = _contour(true == c) & valid
      pred_contour = _contour(pred == c) & valid
      distance_to_true = ndimage.distance_transform_edt(~true_contour) \
          if true_contour.any() else np.full(true.shape, np.inf)
      distance_to_pred = ndimage.distance_transform_edt(~pred_contour) \
          if pred_contour.any() else np.full(true.shape, np.inf)
      counts[:, c] += [(pred_contour & (distance_to_true <= tolerance)).sum(),
                       pred_contour.sum(),
                       (true_contour & (distance_to_pred <= tolerance)).sum(),
                       true_contour.sum()]
  return counts


def _f_from_counts(counts):
  precision = counts[0] / counts[1]
  recall = counts[2] / counts[3]
  return 2 * precision * recall / (precision + recall)


def test_shifted_square_precision_recall_depend_on_tolerance():
  y_true = np.zeros([1, 12, 12], np.int32)
  y_true[0, 3:9, 3:9] = 1
  y_pred = np.roll(y_true, 2, axis=2)  # shifted right by 2 px
  strict = BoundaryFScore(2, tolerance_px=1)
  strict.update_state(y_true, y_pred)
  loose = BoundaryFScore(2, tolerance_px=2)
  loose.update_state(y_true, y_pred)
  # A 2-px shift: with a 1-px tolerance the vertical edges miss, with 2 px all match.
  expected = _f_from_counts(_scipy_counts(y_true, y_pred, 2, 1))
  np.testing.assert_allclose(strict.result()["per_class_f_score"].numpy(), expected,
                             rtol=1e-6)
  np.testing.assert_allclose(loose.result()["f_score"].numpy(), 1.0)
  assert strict.result()["f_score"].numpy() < 1.0


def test_matches_scipy_reference_on_random_maps_with_void_and_streams():
  y_true = ndimage.median_filter(np.random.randint(0, 4, [2, 20, 24]), size=(1, 5, 5))
  y_true[0, :3, :3] = 255
  y_pred = ndimage.median_filter(np.random.randint(0, 4, [2, 20, 24]), size=(1, 5, 5))
  metric = BoundaryFScore(4, tolerance_px=2)
  metric.update_state(y_true[:1], y_pred[:1])
  metric.update_state(y_true[1:], y_pred[1:])
  expected = _f_from_counts(_scipy_counts(y_true, y_pred, 4, 2))
  result = metric.result()
  np.testing.assert_allclose(result["per_class_f_score"].numpy(), expected, rtol=1e-5)
  np.testing.assert_allclose(result["f_score"].numpy(), np.nanmean(expected), rtol=1e-5)
  metric.reset_state()
  assert metric.result()["f_score"].numpy() == 0.0


def test_perfect_prediction_scores_and_scores_input_and_absent_classes():
  y_true = np.zeros([1, 8, 8], np.int32)
  y_true[0, :, 4:] = 2
  metric = BoundaryFScore(4, tolerance_px=0)
  metric.update_state(y_true, tf.one_hot(y_true, 4))  # scores → argmax
  result = metric.result()
  np.testing.assert_allclose(result["f_score"].numpy(), 1.0)
  per_class = result["per_class_f_score"].numpy()
  assert np.isnan(per_class[1]) and np.isnan(per_class[3]) and per_class[0] == 1.0
  missing = BoundaryFScore(4)
  missing.update_state(y_true, np.zeros_like(y_true))  # no predicted contour at all
  np.testing.assert_allclose(missing.result()["f_score"].numpy(), 0.0)


def test_config_round_trip_and_bad_arguments():
  metric = BoundaryFScore(5, tolerance_px=3, ignore_label=0)
  clone = BoundaryFScore.from_config(metric.get_config())
  assert (clone.num_classes, clone.tolerance_px, clone.ignore_label) == (5, 3, 0)
  with pytest.raises(ValueError, match="tolerance_px"):
    BoundaryFScore(5, tolerance_px=-1)
  with pytest.raises(ValueError, match="sample_weight"):
    metric.update_state(np.zeros([1, 4, 4]), np.zeros([1, 4, 4]), sample_weight=1.0)


def test_distributed_update_sums_replica_counts(two_cpu_strategy):
  y_true = ndimage.median_filter(np.random.randint(0, 3, [2, 16, 16]), size=(1, 5, 5))
  y_pred = np.roll(y_true, 1, axis=1)
  with two_cpu_strategy.scope():
    metric = BoundaryFScore(3, tolerance_px=1)
  dataset = tf.data.Dataset.from_tensor_slices((y_true, y_pred)).batch(2)
  for batch in two_cpu_strategy.experimental_distribute_dataset(dataset):
    two_cpu_strategy.run(metric.update_state, args=batch)
  expected = _f_from_counts(_scipy_counts(y_true, y_pred, 3, 1))
  np.testing.assert_allclose(metric.result()["per_class_f_score"].numpy(), expected,
                             rtol=1e-5)
