"""Training losses, correct under `tf.distribute` (global-batch normalisation).

Two layers:
- per-image loss functions (`weighted_bootstrapped_cross_entropy`, `weighted_mse`,
  `weighted_l1`, `label_smoothing_cross_entropy`) return one value per image, `[batch]`;
- task losses (`PanopticDeepLabLoss`, `ClassificationLoss`) are callables
  `loss(targets, outputs, global_batch_size)` returning a dict of scalars (each loss
  part already multiplied by its weight, plus their sum "total"). Each scalar is the
  replica's sum of per-image losses divided by the *global* batch size, so summing
  the replicas' values gives the mean over the global batch; this is what
  `deeplab_axial.training.loop` expects.

New task losses subclass `TaskLoss` and implement `_per_image_losses`.

Everything is computed in float32, whatever the dtype of the model outputs
(mixed_float16). With `check_finite=True` (default) a NaN/Inf loss part fails loudly
with a message naming it ("semantic loss is NaN/Inf"); it is never zeroed. XLA
(`jit_compile=True`) compiles that check away; the NaN/Inf then still propagates to
"total", where the training loop's divergence check reports it.
"""
from typing import Dict, Mapping, Tuple

import tensorflow as tf


def _as_float32(tensor):
  return tf.cast(tf.convert_to_tensor(tensor), tf.float32)


def _flatten_per_image(tensor):
  """[batch, ...] -> [batch, elements]."""
  return tf.reshape(tensor, [tf.shape(tensor)[0], -1])


def mean_of_nonzero_per_image(pixel_losses):
  """Per image: sum of the losses / number of non-zero losses (0 if all are zero).

  This is DeepLab2's normalisation (papers.md §5.3): pixels with zero weight, and
  pixels whose weighted loss is exactly zero, do not count.

  Args:
    pixel_losses: float32 [batch, ...], already weighted.

  Returns:
    float32 [batch].
  """
  pixel_losses = _flatten_per_image(pixel_losses)
  num_nonzero = tf.reduce_sum(tf.cast(tf.not_equal(pixel_losses, 0.0), tf.float32), axis=1)
  return tf.math.divide_no_nan(tf.reduce_sum(pixel_losses, axis=1), num_nonzero)


def _pixel_weights(weights, like):
  """Weights [batch, h, w] or [batch, h, w, 1] -> float32 with the rank of `like`."""
  weights = _as_float32(weights)
  if weights.shape.rank == like.shape.rank + 1:
    weights = tf.squeeze(weights, axis=-1)
  return weights


def weighted_bootstrapped_cross_entropy(labels,
                                        logits,
                                        weights,
                                        top_k_fraction: float = 0.2,
                                        ignore_label: int = 255):
  """Weighted bootstrapped (top-k) softmax cross-entropy, per image.

  Per pixel: softmax cross-entropy × weight (0 where the label is `ignore_label`).
  Per image: keep the k = round(top_k_fraction · pixels) largest (at least 1), then
  sum them and divide by how many of them are non-zero (papers.md §5.3).

  Args:
    labels: int [batch, height, width] (or [..., 1]); class ids or ignore_label.
    logits: float [batch, height, width, classes].
    weights: float [batch, height, width] (or [..., 1]); per-pixel weights.
    top_k_fraction: fraction of the hardest pixels kept, in (0, 1].
    ignore_label: label of pixels excluded from the loss.

  Returns:
    float32 [batch].

  Raises:
    ValueError: if top_k_fraction is not in (0, 1].
  """
  if not 0.0 < top_k_fraction <= 1.0:
    raise ValueError(f"top_k_fraction must be in (0, 1], got {top_k_fraction!r}")
  logits = _as_float32(logits)
  labels = tf.convert_to_tensor(labels)
  if labels.shape.rank == logits.shape.rank:
    labels = tf.squeeze(labels, axis=-1)
  labels = tf.cast(labels, tf.int32)
  is_labelled = tf.not_equal(labels, ignore_label)
  cross_entropy = tf.nn.sparse_softmax_cross_entropy_with_logits(
      labels=tf.where(is_labelled, labels, 0), logits=logits)
  pixel_losses = _flatten_per_image(
      cross_entropy * _pixel_weights(weights, labels) * tf.cast(is_labelled, tf.float32))
  if top_k_fraction < 1.0:
    num_pixels = pixel_losses.shape[1]
    if num_pixels is None:
      num_pixels = tf.cast(tf.shape(pixel_losses)[1], tf.float32)
      k = tf.maximum(tf.cast(tf.round(top_k_fraction * num_pixels), tf.int32), 1)
    else:
      # Python's round() is half-to-even like tf.round.
      k = max(int(round(top_k_fraction * num_pixels)), 1)
    pixel_losses = tf.math.top_k(pixel_losses, k=k, sorted=False).values
  return mean_of_nonzero_per_image(pixel_losses)


def _weighted_regression(y_true, y_pred, weights, error_fn):
  """error_fn(y_pred - y_true), mean over channels, × weights, normalised per image."""
  y_true = _as_float32(y_true)
  y_pred = _as_float32(y_pred)
  per_pixel = tf.reduce_mean(error_fn(y_pred - y_true), axis=-1)
  return mean_of_nonzero_per_image(per_pixel * _pixel_weights(weights, per_pixel))


def weighted_mse(y_true, y_pred, weights):
  """Weighted squared error (e.g. centre heatmap), per image.

  Per pixel: squared error averaged over channels × weight; per image: sum divided by
  the number of non-zero weighted entries (papers.md §5.3).

  Args:
    y_true, y_pred: float [batch, height, width, channels].
    weights: float [batch, height, width] (or [..., 1]).

  Returns:
    float32 [batch].
  """
  return _weighted_regression(y_true, y_pred, weights, tf.square)


def weighted_l1(y_true, y_pred, weights):
  """Weighted absolute error (e.g. centre offsets), per image.

  Per pixel: |error| averaged over channels (dy, dx) × weight; per image: sum divided
  by the number of non-zero weighted entries (papers.md §5.3).

  Args:
    y_true, y_pred: float [batch, height, width, channels].
    weights: float [batch, height, width] (or [..., 1]).

  Returns:
    float32 [batch].
  """
  return _weighted_regression(y_true, y_pred, weights, tf.abs)


def label_smoothing_cross_entropy(labels, logits, label_smoothing: float = 0.1):
  """Softmax cross-entropy against smoothed one-hot targets, per example.

  Target = (1 - label_smoothing) · one_hot(label) + label_smoothing / classes.

  Args:
    labels: int [batch]; class ids.
    logits: float [batch, classes].
    label_smoothing: in [0, 1).

  Returns:
    float32 [batch].

  Raises:
    ValueError: if label_smoothing is not in [0, 1).
  """
  if not 0.0 <= label_smoothing < 1.0:
    raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing!r}")
  logits = _as_float32(logits)
  num_classes = tf.shape(logits)[-1]
  targets = tf.one_hot(tf.cast(tf.reshape(labels, [-1]), tf.int32), num_classes)
  targets = targets * (1.0 - label_smoothing) + label_smoothing / tf.cast(num_classes,
                                                                        tf.float32)
  return -tf.reduce_sum(targets * tf.nn.log_softmax(logits, axis=-1), axis=-1)


class TaskLoss:
  """Base of task losses: weighted per-image parts -> global-batch-normalised scalars.

  Subclasses implement `_per_image_losses(targets, outputs)` returning
  {part name: (weight, per-image losses [batch])}.
  """

  def __init__(self, check_finite: bool = True):
    self._check_finite = check_finite

  def _per_image_losses(self, targets, outputs) -> Dict[str, Tuple[float, tf.Tensor]]:
    raise NotImplementedError

  def __call__(self, targets, outputs, global_batch_size) -> Dict[str, tf.Tensor]:
    """Returns {part: weight · sum(per-image) / global_batch_size, ..., "total": sum}.

    Args:
      targets, outputs: the replica's batch of targets and model outputs.
      global_batch_size: batch size summed over all replicas (int or scalar tensor).

    Raises:
      tf.errors.InvalidArgumentError: (when run) a part is NaN/Inf and check_finite.
    """
    denominator = tf.cast(global_batch_size, tf.float32)
    losses = {}
    for name, (weight, per_image) in self._per_image_losses(targets, outputs).items():
      value = weight * tf.reduce_sum(per_image) / denominator
      if self._check_finite:
        value = tf.debugging.assert_all_finite(value, f"{name} loss is NaN/Inf")
      losses[name] = value
    losses["total"] = tf.add_n(list(losses.values()))
    return losses


class PanopticDeepLabLoss(TaskLoss):
  """Panoptic-DeepLab loss: bootstrapped CE + weighted centre MSE + weighted offset L1.

  targets: the dict of `deeplab_axial.ops.generate_panoptic_targets` (batched):
    semantic, semantic_weights, center_heatmap, center_weights, center_offset,
    offset_weights.
  outputs: the model's dict: semantic_logits [b,h,w,C], center_heatmap [b,h,w,1],
    center_offset [b,h,w,2].
  Returns {"semantic", "center", "offset", "total"}; each part includes its weight.
  """

  def __init__(self,
               semantic_weight: float = 1.0,
               center_weight: float = 200.0,
               offset_weight: float = 0.01,
               top_k_fraction: float = 0.2,
               ignore_label: int = 255,
               check_finite: bool = True):
    super().__init__(check_finite)
    if not 0.0 < top_k_fraction <= 1.0:
      raise ValueError(f"top_k_fraction must be in (0, 1], got {top_k_fraction!r}")
    self._semantic_weight = semantic_weight
    self._center_weight = center_weight
    self._offset_weight = offset_weight
    self._top_k_fraction = top_k_fraction
    self._ignore_label = ignore_label

  def _per_image_losses(self, targets: Mapping[str, tf.Tensor],
                        outputs: Mapping[str, tf.Tensor]):
    semantic = weighted_bootstrapped_cross_entropy(
        targets["semantic"], outputs["semantic_logits"], targets["semantic_weights"],
        top_k_fraction=self._top_k_fraction, ignore_label=self._ignore_label)
    center = weighted_mse(targets["center_heatmap"], outputs["center_heatmap"],
                          targets["center_weights"])
    offset = weighted_l1(targets["center_offset"], outputs["center_offset"],
                         targets["offset_weights"])
    return {
        "semantic": (self._semantic_weight, semantic),
        "center": (self._center_weight, center),
        "offset": (self._offset_weight, offset),
    }


class ClassificationLoss(TaskLoss):
  """Image classification (ImageNet) loss: softmax CE with label smoothing.

  targets: int labels [batch] or {"label": ...}; outputs: logits [batch, classes] or
  {"logits": ...}. Returns {"classification", "total"}.
  """

  def __init__(self, label_smoothing: float = 0.1, check_finite: bool = True):
    super().__init__(check_finite)
    if not 0.0 <= label_smoothing < 1.0:
      raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing!r}")
    self._label_smoothing = label_smoothing

  def _per_image_losses(self, targets, outputs):
    labels = targets["label"] if isinstance(targets, Mapping) else targets
    logits = outputs["logits"] if isinstance(outputs, Mapping) else outputs
    return {"classification": (1.0, label_smoothing_cross_entropy(
        labels, logits, self._label_smoothing))}


__all__ = [
    "weighted_bootstrapped_cross_entropy", "weighted_mse", "weighted_l1",
    "label_smoothing_cross_entropy", "mean_of_nonzero_per_image", "TaskLoss",
    "PanopticDeepLabLoss", "ClassificationLoss",
]
