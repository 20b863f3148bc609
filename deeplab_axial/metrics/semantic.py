"""Streaming semantic-segmentation mean IoU from a confusion matrix."""
import tensorflow as tf
import tf_keras

from deeplab_axial.metrics import _checks


@tf_keras.saving.register_keras_serializable(package="deeplab_axial")
class MeanIoU(tf_keras.metrics.Metric):
  """Mean intersection-over-union of semantic label maps.

  Rules: ground-truth pixels equal to `ignore_label` are skipped. A predicted
  `ignore_label` on a labelled pixel counts as a miss for the ground-truth class (it adds to
  that class's union, to no class's intersection). Per class IoU = TP / (TP + FP + FN);
  the mean runs over the classes present in the ground truth or the prediction
  (TP + FP + FN > 0); absent classes get per-class IoU 0 and are excluded from the mean.

  State: a float64 confusion matrix `[num_classes, num_classes + 1]` (rows ground truth,
  columns prediction, last column "predicted ignore_label"), summed across replicas.

  Args:
    num_classes: number of classes; valid ids are `[0, num_classes)`.
    ignore_label: id of unlabelled pixels (may lie outside `[0, num_classes)`).
    name: metric name.
    dtype: accumulator dtype.
  """

  def __init__(self, num_classes, ignore_label, name="mean_iou", dtype=tf.float64):
    super().__init__(name=name, dtype=dtype)
    if int(num_classes) < 1:
      raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    self.num_classes = int(num_classes)
    self.ignore_label = int(ignore_label)
    self.confusion_matrix = self.add_weight(
        "confusion_matrix", shape=(self.num_classes, self.num_classes + 1),
        initializer="zeros", dtype=dtype)

  def update_state(self, y_true, y_pred, sample_weight=None):
    """Accumulates a batch.

    Args:
      y_true: ground-truth class ids, integer `[batch, height, width]` or `[height, width]`.
      y_pred: predicted class ids, same shape.
      sample_weight: unsupported; must be None.

    Raises:
      ValueError: non-integer inputs, mismatched shapes, ids outside `[0, num_classes)` other
        than `ignore_label`.
    """
    if sample_weight is not None:
      raise ValueError("MeanIoU does not support sample_weight, got a value")
    y_true, y_pred = _checks.label_maps(y_true, y_pred)
    y_true = tf.cast(tf.reshape(y_true, [-1]), tf.int64)
    y_pred = tf.cast(tf.reshape(y_pred, [-1]), tf.int64)
    checks = []
    for name, labels in (("y_true", y_true), ("y_pred", y_pred)):
      checks += _checks.check_in_range(
          labels, ((labels < 0) | (labels >= self.num_classes)) &
          tf.not_equal(labels, self.ignore_label), name,
          f"class ids in [0, {self.num_classes}) or ignore_label {self.ignore_label}")
    columns = self.num_classes + 1
    size = self.num_classes * columns
    with tf.control_dependencies(checks):
      predicted_column = tf.where(tf.equal(y_pred, self.ignore_label),
                                  tf.constant(self.num_classes, tf.int64), y_pred)
      # Ignored ground truth maps past the last bin, which bincount drops.
      cell = tf.where(tf.equal(y_true, self.ignore_label), tf.constant(size, tf.int64),
                      y_true * columns + predicted_column)
    counts = tf.math.bincount(cell, minlength=size, maxlength=size, dtype=self.dtype)
    self.confusion_matrix.assign_add(
        tf.reshape(counts, [self.num_classes, columns]))

  def result(self):
    """Returns `{"miou": scalar, "per_class_iou": [num_classes]}` (float64 fractions)."""
    matrix = tf.convert_to_tensor(self.confusion_matrix)
    true_positive = tf.linalg.diag_part(matrix[:, :self.num_classes])
    ground_truth = tf.reduce_sum(matrix, axis=1)
    predicted = tf.reduce_sum(matrix[:, :self.num_classes], axis=0)
    union = ground_truth + predicted - true_positive
    per_class_iou = tf.math.divide_no_nan(true_positive, union)
    present = tf.cast(union > 0, self.dtype)
    return {"miou": tf.math.divide_no_nan(tf.reduce_sum(per_class_iou * present),
                                          tf.reduce_sum(present)),
            "per_class_iou": per_class_iou}

  def reset_state(self):
    # The base class assigns scalar zeros, which non-scalar variables reject.
    for variable in self.variables:
      variable.assign(tf.zeros_like(variable))

  def get_config(self):
    config = super().get_config()
    config.update(num_classes=self.num_classes, ignore_label=self.ignore_label)
    return config
