"""Boundary F-score (Gated-SCNN / DAVIS style), streaming and distributable.

For every class c, the 1-pixel contours of the ground-truth mask (label == c) and of the
predicted mask (prediction == c) are compared with a pixel tolerance t:

  precision_c = #(predicted contour pixels within t px of a true contour pixel)
                / #(predicted contour pixels)
  recall_c    = #(true contour pixels within t px of a predicted contour pixel)
                / #(true contour pixels)
  F_c = 2·P·R / (P + R).

"Within t px" is Euclidean (dilation by a disk of radius t). Counts are accumulated over
the whole dataset per class (so the metric is a sum of per-batch counts and reduces
across replicas by summation), unlike the official script, which averages per-image
F-scores. Void pixels (`ignore_label`) are a region of their own in both maps; contour
pixels lying on void are not counted. Classes with no contour pixel in ground truth and
prediction are left out of the means; a class with contours on one side only has F = 0
(precision or recall 0, as in the DAVIS convention).

Gated-SCNN reports F at tolerances 3, 5, 9 and 12 px on Cityscapes; use one metric
instance per tolerance. Cost per image: a (2t+1)² depthwise convolution over K channels.
"""
from typing import Dict

import tensorflow as tf
import tf_keras

from deeplab_axial.ops import boundaries


@tf_keras.saving.register_keras_serializable(package="deeplab_axial")
class BoundaryFScore(tf_keras.metrics.Metric):
  """Per-class boundary precision / recall / F-score with a pixel tolerance.

  `update_state(y_true, y_pred)`: y_true int `[batch, H, W]` semantic labels; y_pred
  either int `[batch, H, W]` predicted labels or float `[batch, H, W, num_classes]`
  scores (argmax is taken).

  `result()`: dict of float32 `f_score`, `precision`, `recall` (means over classes with
  contours) and `per_class_f_score` `[num_classes]` (NaN for classes without contours).
  """

  def __init__(self, num_classes: int, tolerance_px: int = 3, ignore_label: int = 255,
               name: str = "boundary_f_score", dtype=None):
    super().__init__(name=name, dtype=dtype)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
      raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    if isinstance(tolerance_px, bool) or not isinstance(tolerance_px, int) or \
        tolerance_px < 0:
      raise ValueError(f"tolerance_px must be a non-negative int, got {tolerance_px!r}")
    self.num_classes = num_classes
    self.tolerance_px = tolerance_px
    self.ignore_label = ignore_label
    # float64: contour pixel counts over a dataset exceed float32's exact integer range.
    self._counts = {
        key: self.add_weight(name=key, shape=[num_classes], initializer="zeros",
                             dtype=tf.float64)
        for key in ("predicted_matched", "predicted_total", "true_matched", "true_total")}

  def update_state(self, y_true, y_pred, sample_weight=None):
    if sample_weight is not None:
      raise ValueError("BoundaryFScore does not support sample_weight; mask pixels with "
                       "ignore_label instead")
    y_true = tf.convert_to_tensor(y_true)
    y_pred = tf.convert_to_tensor(y_pred)
    if y_pred.shape.rank == 4:
      if y_pred.shape[-1] != self.num_classes:
        raise ValueError(f"y_pred scores must have {self.num_classes} channels, got shape "
                         f"{y_pred.shape}")
      y_pred = tf.argmax(y_pred, axis=-1, output_type=tf.int32)
    if y_true.shape.rank != 3 or y_pred.shape.rank != 3:
      raise ValueError(f"y_true and y_pred must be [batch, height, width] label maps, got "
                       f"shapes {y_true.shape} and {y_pred.shape}")
    y_true = tf.cast(y_true, tf.int32)
    valid = tf.not_equal(y_true, self.ignore_label)[..., tf.newaxis]
    # Void pixels become a region of their own (one_hot of an out-of-range id is zero).
    y_pred = tf.where(valid[..., 0], tf.cast(y_pred, tf.int32), -1)
    true_masks = tf.one_hot(y_true, self.num_classes, on_value=True, off_value=False)
    predicted_masks = tf.one_hot(y_pred, self.num_classes, on_value=True, off_value=False)
    true_contours = tf.logical_and(boundaries.class_boundaries(true_masks), valid)
    predicted_contours = tf.logical_and(boundaries.class_boundaries(predicted_masks), valid)
    near_true = boundaries.binary_dilation(true_contours, self.tolerance_px)
    near_predicted = boundaries.binary_dilation(predicted_contours, self.tolerance_px)

    def count(mask):
      return tf.reduce_sum(tf.cast(mask, tf.float64), axis=[0, 1, 2])

    self._counts["predicted_matched"].assign_add(
        count(tf.logical_and(predicted_contours, near_true)))
    self._counts["predicted_total"].assign_add(count(predicted_contours))
    self._counts["true_matched"].assign_add(count(tf.logical_and(true_contours,
                                                                 near_predicted)))
    self._counts["true_total"].assign_add(count(true_contours))

  def result(self) -> Dict[str, tf.Tensor]:
    predicted_total = self._counts["predicted_total"]
    true_total = self._counts["true_total"]
    one = tf.ones_like(predicted_total)
    zero = tf.zeros_like(predicted_total)
    # DAVIS convention: an empty side has precision (or recall) 1, the other side then 0.
    precision = tf.where(predicted_total > 0,
                         tf.math.divide_no_nan(self._counts["predicted_matched"],
                                               predicted_total),
                         tf.where(true_total > 0, one, zero))
    recall = tf.where(true_total > 0,
                      tf.math.divide_no_nan(self._counts["true_matched"], true_total),
                      tf.where(predicted_total > 0, one, zero))
    f_score = tf.math.divide_no_nan(2.0 * precision * recall, precision + recall)
    present = tf.logical_or(predicted_total > 0, true_total > 0)
    nan = tf.constant(float("nan"), tf.float64)

    def mean_over_present(values):
      return tf.cast(tf.math.divide_no_nan(
          tf.reduce_sum(tf.where(present, values, zero)),
          tf.reduce_sum(tf.cast(present, tf.float64))), tf.float32)

    return {
        "f_score": mean_over_present(f_score),
        "precision": mean_over_present(precision),
        "recall": mean_over_present(recall),
        "per_class_f_score": tf.cast(tf.where(present, f_score, nan), tf.float32),
    }

  def reset_state(self):
    for variable in self._counts.values():
      variable.assign(tf.zeros_like(variable))

  def get_config(self):
    config = super().get_config()
    config.update({"num_classes": self.num_classes, "tolerance_px": self.tolerance_px,
                   "ignore_label": self.ignore_label})
    return config
