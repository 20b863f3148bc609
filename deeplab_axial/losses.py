"""Training losses, correct under `tf.distribute` (global-batch normalisation).

Two layers:
- loss functions of tensors. The per-image ones (`weighted_bootstrapped_cross_entropy`,
  `weighted_mse`, `weighted_l1`, `label_smoothing_cross_entropy`) return one value per
  image, `[batch]`. The Gated-SCNN and SegViT functions (`balanced_boundary_bce`,
  `masked_cross_entropy`, `dual_task_regularizer`, `gated_scnn_loss`, `atm_loss`,
  `segvit_loss`) pool their sums and counts over the batch into scalars by default, and
  return `[batch]` values normalised within each image with `per_image=True`;
- task losses (`PanopticDeepLabLoss`, `SemanticSegmentationLoss`, `GatedScnnLoss`,
  `SegVitLoss`, `ClassificationLoss`) are callables
  `loss(targets, outputs, global_batch_size)` returning a dict of scalars (each loss
  part already multiplied by its weight, plus their sum "total"). Each scalar is the
  replica's sum of per-image losses divided by the *global* batch size, so summing
  the replicas' values gives the mean over the global batch; this is what
  `deeplab_axial.training.loop` expects. (A batch-pooled mean, as the released Gated-SCNN
  and SegViT code compute, would need a cross-replica count; per-image normalisation is
  DeepLab2's convention and needs none.)

New task losses subclass `TaskLoss` and implement `_per_image_losses`.

Everything is computed in float32, whatever the dtype of the model outputs
(mixed_float16). With `check_finite=True` (default) a NaN/Inf loss part fails loudly
with a message naming it ("semantic loss is NaN/Inf"); it is never zeroed. XLA
(`jit_compile=True`) compiles that check away; the NaN/Inf then still propagates to
"total", where the training loop's divergence check reports it.

Gated-SCNN (Takikawa et al. 2019; other_seeds.md §4.3), total loss

  λ1·BCE_balanced(boundary) + λ2·CE(semantic) + λ3·L_reg→ + λ4·L_reg←,
  λ1 = 20, λ2 = λ3 = λ4 = 1, boundary threshold 0.8, Gumbel temperature τ = 1 (paper;
  the released code uses τ = 0.5).

* L_reg→ compares the boundary potential ζ of the Gumbel-softmax relaxed semantic
  prediction with the one of the ground truth, ζ̂: ζ = (1/√2)·‖∇p̃‖ where ∇ is the central
  difference x[i+1] − x[i−1] along height and width of every class channel, so a hard
  two-class step gives ζ = 1 on the two pixels around it. The paper's Gaussian smoothing
  is omitted (the released code's smoothing and gradient are no-ops). As released, the
  term is 0.5·mean_{ζ>ε}|ζ − ζ̂| + 0.5·mean_{ζ̂>ε}|ζ − ζ̂|, restricted to pixels whose
  4-neighbourhood is not void.
* L_reg← is the semantic cross-entropy on the pixels where σ(boundary logits) > 0.8.
* The semantic CE of `gated_scnn_loss` is plain (mean over valid pixels), not the
  released per-image class-weighted variant; `GatedScnnLoss` uses the (optionally
  bootstrapped) CE of the semantic task.

SegViT (Zhang et al. 2022; other_seeds.md §5.3): fixed assignment query i ↔ class i;
CE over K + 1 classes ("no class" weight 0.1) + 20·focal + 1·dice on the masks of the
classes present in each image, normalised by the number of present masks (≥ 1), summed
over the deep-supervision outputs.
"""
import math
from typing import Dict, Mapping, Optional, Tuple

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
                                        ignore_label: int = 255,
                                        label_smoothing: float = 0.0):
  """Weighted bootstrapped (top-k) softmax cross-entropy, per image.

  Per pixel: softmax cross-entropy × weight (0 where the label is `ignore_label`); with
  label smoothing ε the target is (1 − ε)·one_hot + ε / classes.
  Per image: keep the k = round(top_k_fraction · pixels) largest (at least 1), then
  sum them and divide by how many of them are non-zero (papers.md §5.3).

  Args:
    labels: int [batch, height, width] (or [..., 1]); class ids or ignore_label.
    logits: float [batch, height, width, classes].
    weights: float [batch, height, width] (or [..., 1]); per-pixel weights.
    top_k_fraction: fraction of the hardest pixels kept, in (0, 1].
    ignore_label: label of pixels excluded from the loss.
    label_smoothing: ε in [0, 1).

  Returns:
    float32 [batch].

  Raises:
    ValueError: if top_k_fraction is not in (0, 1] or label_smoothing not in [0, 1).
  """
  if not 0.0 < top_k_fraction <= 1.0:
    raise ValueError(f"top_k_fraction must be in (0, 1], got {top_k_fraction!r}")
  if not 0.0 <= label_smoothing < 1.0:
    raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing!r}")
  logits = _as_float32(logits)
  labels = tf.convert_to_tensor(labels)
  if labels.shape.rank == logits.shape.rank:
    labels = tf.squeeze(labels, axis=-1)
  labels = tf.cast(labels, tf.int32)
  is_labelled = tf.not_equal(labels, ignore_label)
  cross_entropy = tf.nn.sparse_softmax_cross_entropy_with_logits(
      labels=tf.where(is_labelled, labels, 0), logits=logits)
  if label_smoothing:
    uniform_cross_entropy = -tf.reduce_mean(tf.nn.log_softmax(logits, axis=-1), axis=-1)
    cross_entropy = ((1.0 - label_smoothing) * cross_entropy +
                     label_smoothing * uniform_cross_entropy)
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


_EPSILON = 1e-8


def _check_positive(name, value):
  if not value > 0:
    raise ValueError(f"{name} must be > 0, got {value!r}")


def _squeeze_channel(labels, name):
  labels = tf.convert_to_tensor(labels)
  if labels.shape.rank == 4 and labels.shape[-1] == 1:
    labels = labels[..., 0]
  if labels.shape.rank != 3 or not labels.dtype.is_integer:
    raise ValueError(f"{name} must be an integer [batch, height, width] (or [..., 1]) "
                     f"tensor, got dtype {labels.dtype.name} shape {labels.shape}")
  return tf.cast(labels, tf.int32)


def _check_same_size(labels, predictions, label_name, prediction_name):
  label_size = tf.TensorShape(labels.shape)[1:3]
  prediction_size = tf.TensorShape(predictions.shape)[1:3]
  if (label_size.is_fully_defined() and prediction_size.is_fully_defined()
      and label_size != prediction_size):
    raise ValueError(f"{prediction_name} spatial size {prediction_size} must equal "
                     f"{label_name} size {label_size}")


def _pool(sums, counts, per_image: bool, min_count: float = 0.0):
  """Per-image sums and counts `[batch]` -> sums / counts per image or over the batch.

  Returns float32 `[batch]` (per_image) or a scalar; 0 where the count is 0.
  """
  if not per_image:
    sums, counts = tf.reduce_sum(sums), tf.reduce_sum(counts)
  return tf.math.divide_no_nan(sums, tf.maximum(counts, min_count))


def _masked_mean(values, mask, per_image: bool):
  """Mean of `values [batch, h, w]` over `mask` (per image or pooled); 0 if empty."""
  mask = tf.cast(mask, tf.float32)
  return _pool(tf.reduce_sum(values * mask, axis=[1, 2]), tf.reduce_sum(mask, axis=[1, 2]),
               per_image)


def balanced_boundary_bce(boundary_targets, boundary_logits, ignore_label: int = 255,
                          per_image: bool = False) -> tf.Tensor:
  """Class-balanced boundary binary cross-entropy (Gated-SCNN, HED-style).

  Per image, with P positive and N negative valid pixels, positives are weighted
  β = N / (P + N) and negatives 1 − β = P / (P + N); the weighted per-pixel BCE is
  averaged over all valid pixels of the batch (of each image with `per_image`). Void
  pixels (`ignore_label`) get weight 0.

  Args:
    boundary_targets: int `[batch, height, width]` (or `[..., 1]`), values 0, 1 or
      `ignore_label` (as made by `ops.semantic_boundaries`).
    boundary_logits: float `[batch, height, width, 1]`, same spatial size.
    ignore_label: the void value in the targets.
    per_image: return one value per image instead of the batch-pooled mean.

  Returns:
    float32 scalar, or `[batch]` with `per_image`.
  """
  targets = _squeeze_channel(boundary_targets, "boundary_targets")
  logits = tf.convert_to_tensor(boundary_logits)
  if logits.shape.rank != 4 or logits.shape[-1] != 1:
    raise ValueError(f"boundary_logits must have shape [batch, height, width, 1], got "
                     f"{logits.shape}")
  _check_same_size(targets, logits, "boundary_targets", "boundary_logits")
  logits = tf.cast(logits[..., 0], tf.float32)
  valid = tf.cast(tf.not_equal(targets, ignore_label), tf.float32)
  positive = tf.cast(tf.equal(targets, 1), tf.float32) * valid
  negative = valid - positive
  num_positive = tf.reduce_sum(positive, axis=[1, 2], keepdims=True)
  num_negative = tf.reduce_sum(negative, axis=[1, 2], keepdims=True)
  num_valid = num_positive + num_negative
  beta = tf.math.divide_no_nan(num_negative, num_valid)
  weights = positive * beta + negative * (1.0 - beta) * tf.cast(num_valid > 0, tf.float32)
  losses = tf.nn.sigmoid_cross_entropy_with_logits(labels=positive, logits=logits)
  return _masked_mean(weights * losses, valid, per_image)


def masked_cross_entropy(labels, logits, mask=None, ignore_label: int = 255,
                         per_image: bool = False) -> tf.Tensor:
  """Softmax cross-entropy averaged over valid pixels (and `mask`, if given); 0 if none.

  Args:
    labels: int `[batch, height, width]`.
    logits: float `[batch, height, width, num_classes]`.
    mask: optional bool `[batch, height, width]` restricting the pixels.
    ignore_label: void label, excluded.
    per_image: average within each image (`[batch]`) instead of over the batch.
  """
  labels = _squeeze_channel(labels, "labels")
  logits = tf.cast(logits, tf.float32)
  _check_same_size(labels, logits, "labels", "logits")
  valid = tf.not_equal(labels, ignore_label)
  if mask is not None:
    valid = tf.logical_and(valid, mask)
  safe_labels = tf.where(valid, labels, 0)
  losses = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=safe_labels, logits=logits)
  return _masked_mean(losses, valid, per_image)


def gumbel_softmax(logits, temperature: float = 1.0, seed=None) -> tf.Tensor:
  """Gumbel-softmax relaxation of argmax over the last axis.

  softmax((logits + g) / τ) with g = −log(−log(u)), u ~ Uniform(0, 1) i.i.d.

  Args:
    logits: float `[..., num_classes]`.
    temperature: τ > 0; τ → 0 approaches the one-hot of argmax(logits + g).
    seed: optional shape-[2] int seed for stateless (reproducible) noise.

  Returns:
    float32 tensor of the shape of `logits`, summing to 1 over the last axis.
  """
  _check_positive("temperature", temperature)
  logits = tf.cast(logits, tf.float32)
  shape = tf.shape(logits)
  if seed is None:
    uniform = tf.random.uniform(shape, minval=_EPSILON, maxval=1.0)
  else:
    uniform = tf.random.stateless_uniform(shape, seed=seed, minval=_EPSILON, maxval=1.0)
  gumbel = -tf.math.log(-tf.math.log(uniform))
  return tf.nn.softmax((logits + gumbel) / temperature, axis=-1)


def boundary_potential(probabilities) -> tf.Tensor:
  """ζ = (1/√2)·‖∇p‖ over all class channels (central differences, edge padding).

  Args:
    probabilities: float `[batch, height, width, num_classes]` (soft or one-hot).

  Returns:
    float32 `[batch, height, width]`; 1 on both sides of a hard two-class step edge.
  """
  probabilities = tf.cast(probabilities, tf.float32)
  padded = tf.pad(probabilities, [[0, 0], [1, 1], [1, 1], [0, 0]], mode="SYMMETRIC")
  grad_y = padded[:, 2:, 1:-1] - padded[:, :-2, 1:-1]
  grad_x = padded[:, 1:-1, 2:] - padded[:, 1:-1, :-2]
  squared = tf.reduce_sum(tf.square(grad_y) + tf.square(grad_x), axis=-1)
  # Double where: sqrt has an infinite derivative at 0 (flat regions).
  nonzero = squared > 0.0
  magnitude = tf.where(nonzero, tf.sqrt(tf.where(nonzero, squared, 1.0)), 0.0)
  return magnitude / math.sqrt(2.0)


def dual_task_regularizer(semantic_logits, labels, boundary_logits,
                          ignore_label: int = 255, temperature: float = 1.0,
                          boundary_threshold: float = 0.8, seed=None,
                          per_image: bool = False) -> Dict[str, tf.Tensor]:
  """The two Gated-SCNN dual-task consistency terms (unweighted).

  Args:
    semantic_logits: float `[batch, height, width, num_classes]`.
    labels: int `[batch, height, width]` semantic ground truth.
    boundary_logits: float `[batch, height, width, 1]` shape-stream output.
    ignore_label: void label.
    temperature: Gumbel-softmax τ.
    boundary_threshold: pixels with σ(boundary logit) above it enter L_reg←.
    seed: optional stateless seed for the Gumbel noise.
    per_image: means within each image (`[batch]` values) instead of over the batch.

  Returns:
    dict with float32 scalars (or `[batch]`) `boundary_consistency` (L_reg→) and
    `boundary_cross_entropy` (L_reg←).
  """
  labels = _squeeze_channel(labels, "labels")
  semantic_logits = tf.convert_to_tensor(semantic_logits)
  if semantic_logits.shape.rank != 4 or semantic_logits.shape[-1] is None:
    raise ValueError(f"semantic_logits must have shape [batch, height, width, "
                     f"num_classes], got {semantic_logits.shape}")
  _check_same_size(labels, semantic_logits, "labels", "semantic_logits")
  _check_same_size(labels, boundary_logits, "labels", "boundary_logits")
  if not 0.0 <= boundary_threshold < 1.0:
    raise ValueError(f"boundary_threshold must be in [0, 1), got {boundary_threshold!r}")
  num_classes = semantic_logits.shape[-1]
  valid = tf.not_equal(labels, ignore_label)
  # A pixel's central differences read its 4 neighbours: they must all be labelled.
  void = tf.cast(tf.logical_not(valid), tf.float32)[..., tf.newaxis]
  void_near = tf.nn.max_pool2d(void, ksize=3, strides=1, padding="SAME")[..., 0] > 0
  consistent_region = tf.logical_not(void_near)

  relaxed = gumbel_softmax(semantic_logits, temperature, seed=seed)
  predicted = boundary_potential(relaxed)
  target = boundary_potential(tf.one_hot(tf.where(valid, labels, 0), num_classes))
  difference = tf.abs(predicted - target)
  consistency = 0.5 * (
      _masked_mean(difference, tf.logical_and(consistent_region, predicted > _EPSILON),
                   per_image) +
      _masked_mean(difference, tf.logical_and(consistent_region, target > _EPSILON),
                   per_image))

  on_boundary = tf.sigmoid(tf.cast(boundary_logits, tf.float32))[..., 0] > boundary_threshold
  boundary_ce = masked_cross_entropy(labels, semantic_logits, mask=on_boundary,
                                     ignore_label=ignore_label, per_image=per_image)
  return {"boundary_consistency": consistency, "boundary_cross_entropy": boundary_ce}


def gated_scnn_loss(semantic_logits, boundary_logits, labels, boundary_targets,
                    ignore_label: int = 255, boundary_weight: float = 20.0,
                    semantic_weight: float = 1.0, consistency_weight: float = 1.0,
                    boundary_cross_entropy_weight: float = 1.0, temperature: float = 1.0,
                    boundary_threshold: float = 0.8, seed=None,
                    per_image: bool = False) -> Dict[str, tf.Tensor]:
  """Gated-SCNN total loss λ1·BCE + λ2·CE + λ3·L_reg→ + λ4·L_reg← (paper weights).

  Args:
    semantic_logits: float `[batch, H, W, num_classes]`.
    boundary_logits: float `[batch, H, W, 1]`.
    labels: int `[batch, H, W]`.
    boundary_targets: int `[batch, H, W]` from `ops.semantic_boundaries(labels)`.
    per_image: `[batch]` terms normalised within each image instead of scalars.
    Remaining arguments: loss weights λ1..λ4 and `dual_task_regularizer` settings.

  Returns:
    dict of float32 scalars (or `[batch]`): `boundary_bce`, `semantic_cross_entropy`,
    `boundary_consistency`, `boundary_cross_entropy` (unweighted) and `total`.
  """
  terms = {
      "boundary_bce": balanced_boundary_bce(boundary_targets, boundary_logits, ignore_label,
                                            per_image),
      "semantic_cross_entropy": masked_cross_entropy(labels, semantic_logits,
                                                     ignore_label=ignore_label,
                                                     per_image=per_image),
  }
  terms.update(dual_task_regularizer(semantic_logits, labels, boundary_logits,
                                     ignore_label, temperature, boundary_threshold, seed,
                                     per_image))
  terms["total"] = (boundary_weight * terms["boundary_bce"] +
                    semantic_weight * terms["semantic_cross_entropy"] +
                    consistency_weight * terms["boundary_consistency"] +
                    boundary_cross_entropy_weight * terms["boundary_cross_entropy"])
  return terms


def sigmoid_focal_loss(targets, logits, alpha: float = 0.25, gamma: float = 2.0):
  """Per-element focal loss α_t·(1 − p_t)^γ·BCE (Lin et al.); same shape as logits."""
  logits = tf.cast(logits, tf.float32)
  targets = tf.cast(targets, tf.float32)
  probabilities = tf.sigmoid(logits)
  bce = tf.nn.sigmoid_cross_entropy_with_logits(labels=targets, logits=logits)
  p_t = probabilities * targets + (1.0 - probabilities) * (1.0 - targets)
  alpha_t = alpha * targets + (1.0 - alpha) * (1.0 - targets)
  return alpha_t * tf.pow(1.0 - p_t, gamma) * bce


def atm_loss(class_logits, mask_logits, labels, ignore_label: int = 255,
             no_class_weight: float = 0.1, class_weight: float = 1.0,
             focal_weight: float = 20.0, dice_weight: float = 1.0,
             focal_alpha: float = 0.25, focal_gamma: float = 2.0,
             ignore_pixels_in_masks: bool = True,
             per_image: bool = False) -> Dict[str, tf.Tensor]:
  """SegViT attention-to-mask loss for one output, fixed assignment query k ↔ class k.

  * classification: cross-entropy over K + 1 classes; the target of query k is k when
    class k is present in the image, else K ("no class"); weighted mean with weight
    `no_class_weight` for "no class" targets and 1 otherwise.
  * masks (present classes only): mask logits are bilinearly resized to the label size;
    focal loss averaged over pixels and dice loss 1 − (2Σpt + 1)/(Σp + Σt + 1) per mask,
    each summed over present masks and divided by their number (clamped to ≥ 1).
    As released, void pixels are negatives in every mask (`ignore_pixels_in_masks=True`);
    with False they are excluded from both mask losses.

  Args:
    class_logits: float `[batch, K, K + 1]`.
    mask_logits: float `[batch, h, w, K]` (pre-sigmoid similarity maps).
    labels: int `[batch, H, W]`, values in [0, K) or `ignore_label`.
    per_image: normalise within each image (the class weights and the present masks of
      that image) and return `[batch]` values instead of batch-pooled scalars.

  Returns:
    dict of float32 scalars (or `[batch]`) `class_cross_entropy`, `mask_focal`,
    `mask_dice` (unweighted) and `total` (weighted).
  """
  labels = _squeeze_channel(labels, "labels")
  class_logits = tf.cast(class_logits, tf.float32)
  mask_logits = tf.cast(mask_logits, tf.float32)
  num_classes = class_logits.shape[-2]
  if (class_logits.shape.rank != 3 or num_classes is None or
      class_logits.shape[-1] != num_classes + 1):
    raise ValueError(f"class_logits must have shape [batch, K, K + 1], got "
                     f"{class_logits.shape}")
  if mask_logits.shape.rank != 4 or mask_logits.shape[-1] != num_classes:
    raise ValueError(f"mask_logits must have shape [batch, h, w, {num_classes}], got "
                     f"{mask_logits.shape}")
  target_masks = tf.one_hot(labels, num_classes, dtype=tf.float32)  # void → all zero
  present = tf.reduce_any(target_masks > 0, axis=[1, 2])  # [batch, K]
  present_float = tf.cast(present, tf.float32)

  class_targets = tf.where(present, tf.range(num_classes)[tf.newaxis], num_classes)
  class_weights = tf.where(present, 1.0, no_class_weight)
  class_ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=class_targets,
                                                            logits=class_logits)
  class_loss = _pool(tf.reduce_sum(class_weights * class_ce, axis=1),
                     tf.reduce_sum(class_weights, axis=1), per_image)

  mask_logits = tf.image.resize(mask_logits, tf.shape(labels)[1:3])
  if ignore_pixels_in_masks:
    pixel_weights = tf.ones_like(target_masks[..., :1])
  else:
    pixel_weights = tf.cast(tf.not_equal(labels, ignore_label), tf.float32)[..., tf.newaxis]
  num_pixels = tf.maximum(tf.reduce_sum(pixel_weights, axis=[1, 2]), 1.0)  # [batch, 1]
  num_masks = tf.reduce_sum(present_float, axis=1)

  focal = sigmoid_focal_loss(target_masks, mask_logits, focal_alpha, focal_gamma)
  focal_per_mask = tf.reduce_sum(focal * pixel_weights, axis=[1, 2]) / num_pixels
  probabilities = tf.sigmoid(mask_logits) * pixel_weights
  numerator = 2.0 * tf.reduce_sum(probabilities * target_masks, axis=[1, 2]) + 1.0
  denominator = (tf.reduce_sum(probabilities, axis=[1, 2]) +
                 tf.reduce_sum(target_masks, axis=[1, 2]) + 1.0)
  dice_per_mask = 1.0 - numerator / denominator
  focal_loss = _pool(tf.reduce_sum(focal_per_mask * present_float, axis=1), num_masks,
                     per_image, min_count=1.0)
  dice_loss = _pool(tf.reduce_sum(dice_per_mask * present_float, axis=1), num_masks,
                    per_image, min_count=1.0)
  return {
      "class_cross_entropy": class_loss, "mask_focal": focal_loss, "mask_dice": dice_loss,
      "total": class_weight * class_loss + focal_weight * focal_loss +
               dice_weight * dice_loss,
  }


def segvit_loss(outputs: Dict[str, tf.Tensor], labels, ignore_label: int = 255,
                num_outputs: Optional[int] = None, **atm_loss_kwargs) -> Dict[str, tf.Tensor]:
  """ATM loss summed over SegViT's deep-supervision outputs.

  Args:
    outputs: dict with `class_logits` `[batch, S, K, K + 1]` and `mask_logits`
      `[batch, S, h, w, K]` (as returned by `models.segvit`).
    labels: int `[batch, H, W]`.
    num_outputs: use only the last `num_outputs` of the S outputs (default: all).
    **atm_loss_kwargs: forwarded to `atm_loss` (e.g. `per_image=True`).

  Returns:
    dict of float32 scalars (`[batch]` with per_image) with the summed terms of
    `atm_loss`.
  """
  for key in ("class_logits", "mask_logits"):
    if key not in outputs:
      raise ValueError(f"outputs must contain {key!r}, got keys {sorted(outputs)}")
  total_outputs = outputs["class_logits"].shape[1]
  if total_outputs is None or outputs["mask_logits"].shape[1] != total_outputs:
    raise ValueError(f"class_logits {outputs['class_logits'].shape} and mask_logits "
                     f"{outputs['mask_logits'].shape} need the same known output axis 1")
  num_outputs = total_outputs if num_outputs is None else num_outputs
  if not 1 <= num_outputs <= total_outputs:
    raise ValueError(f"num_outputs must be in [1, {total_outputs}], got {num_outputs!r}")
  totals = {}
  for index in range(total_outputs - num_outputs, total_outputs):
    terms = atm_loss(outputs["class_logits"][:, index], outputs["mask_logits"][:, index],
                     labels, ignore_label, **atm_loss_kwargs)
    for name, value in terms.items():
      totals[name] = totals.get(name, 0.0) + value
  return totals


class TaskLoss:
  """Base of task losses: weighted per-image parts -> global-batch-normalised scalars.

  Subclasses implement `_per_image_losses(targets, outputs)` returning
  {part name: (weight, per-image losses [batch])} and list those names, in order, in
  `part_names` (the trainer logs "total" followed by them).
  """

  def __init__(self, check_finite: bool = True):
    self._check_finite = check_finite

  @property
  def part_names(self) -> Tuple[str, ...]:
    raise NotImplementedError

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

  @property
  def part_names(self):
    return ("semantic", "center", "offset")

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


def _check_fraction(name, value, low_open, high_open):
  low_ok = value > 0.0 if low_open else value >= 0.0
  high_ok = value < 1.0 if high_open else value <= 1.0
  if not (low_ok and high_ok):
    interval = f"{'(' if low_open else '['}0, 1{')' if high_open else ']'}"
    raise ValueError(f"{name} must be in {interval}, got {value!r}")


def _semantic_labels(targets, ignore_label):
  """The `semantic` target and its per-pixel weights (1 where absent)."""
  labels = targets["semantic"]
  weights = targets.get("semantic_weights")
  if weights is None:
    weights = tf.ones(tf.shape(labels)[:3], tf.float32)
  return labels, weights


class SemanticSegmentationLoss(TaskLoss):
  """Semantic segmentation: (bootstrapped) CE on `semantic_logits` and auxiliary logits.

  targets: `semantic` int [b, h, w] (`ignore_label` = void) and optionally
    `semantic_weights` float [b, h, w].
  outputs: `semantic_logits` [b, h, w, C] and every key of `auxiliary_weights` (e.g.
    DANet's per-branch `position_logits`, `channel_logits`), at the label size.
  Returns {"semantic", "<key minus _logits>_aux" per auxiliary output, "total"}.

  Args:
    semantic_weight: weight of the main CE.
    top_k_fraction: hardest fraction of pixels kept per image (1 = plain CE).
    ignore_label: void label.
    label_smoothing: ε of the per-pixel CE.
    auxiliary_weights: {output key: weight} of the auxiliary CE terms.
  """

  def __init__(self, semantic_weight: float = 1.0, top_k_fraction: float = 1.0,
               ignore_label: int = 255, label_smoothing: float = 0.0,
               auxiliary_weights: Optional[Mapping[str, float]] = None,
               check_finite: bool = True):
    super().__init__(check_finite)
    _check_fraction("top_k_fraction", top_k_fraction, low_open=True, high_open=False)
    _check_fraction("label_smoothing", label_smoothing, low_open=False, high_open=True)
    self._semantic_weight = semantic_weight
    self._top_k_fraction = top_k_fraction
    self._ignore_label = ignore_label
    self._label_smoothing = label_smoothing
    self._auxiliary_weights = dict(auxiliary_weights or {})

  @staticmethod
  def auxiliary_part_name(output_key: str) -> str:
    """`position_logits` -> `position_aux`."""
    stem = output_key[:-len("_logits")] if output_key.endswith("_logits") else output_key
    return f"{stem}_aux"

  @property
  def part_names(self):
    return ("semantic",) + tuple(self.auxiliary_part_name(key)
                                 for key in self._auxiliary_weights)

  def _cross_entropy(self, labels, weights, logits):
    return weighted_bootstrapped_cross_entropy(
        labels, logits, weights, top_k_fraction=self._top_k_fraction,
        ignore_label=self._ignore_label, label_smoothing=self._label_smoothing)

  def _per_image_losses(self, targets, outputs):
    labels, weights = _semantic_labels(targets, self._ignore_label)
    parts = {"semantic": (self._semantic_weight, self._cross_entropy(
        labels, weights, outputs["semantic_logits"]))}
    for key, weight in self._auxiliary_weights.items():
      if key not in outputs:
        raise ValueError(f"auxiliary output {key!r} is not among the model outputs "
                         f"{sorted(outputs)}")
      parts[self.auxiliary_part_name(key)] = (weight, self._cross_entropy(
          labels, weights, outputs[key]))
    return parts


class GatedScnnLoss(SemanticSegmentationLoss):
  """Gated-SCNN: semantic CE + λ1·balanced boundary BCE + λ3·L_reg→ + λ4·L_reg←.

  targets: `semantic` int [b, h, w] and `boundary` int [b, h, w] (0/1/ignore, from
  `ops.semantic_boundaries`). outputs: `semantic_logits` [b, h, w, C] and
  `boundary_logits` [b, h, w, 1]. Every term is normalised within its image (see
  `gated_scnn_loss`). Returns {"semantic", "boundary", "dual_task_consistency",
  "dual_task_cross_entropy", "total"}.

  Args:
    boundary_weight: λ1 (20 in the paper).
    dual_task_weight: λ3 = λ4 (1 in the paper).
    temperature, boundary_threshold: see `dual_task_regularizer`.
    Others: see `SemanticSegmentationLoss` (λ2 is `semantic_weight`).
  """

  def __init__(self, semantic_weight: float = 1.0, top_k_fraction: float = 1.0,
               ignore_label: int = 255, label_smoothing: float = 0.0,
               boundary_weight: float = 20.0, dual_task_weight: float = 1.0,
               temperature: float = 1.0, boundary_threshold: float = 0.8,
               check_finite: bool = True):
    super().__init__(semantic_weight, top_k_fraction, ignore_label, label_smoothing,
                     check_finite=check_finite)
    _check_positive("temperature", temperature)
    _check_fraction("boundary_threshold", boundary_threshold, low_open=False,
                    high_open=True)
    self._boundary_weight = boundary_weight
    self._dual_task_weight = dual_task_weight
    self._temperature = temperature
    self._boundary_threshold = boundary_threshold

  @property
  def part_names(self):
    return ("semantic", "boundary", "dual_task_consistency", "dual_task_cross_entropy")

  def _per_image_losses(self, targets, outputs):
    parts = super()._per_image_losses(targets, outputs)
    labels, semantic_logits = targets["semantic"], outputs["semantic_logits"]
    boundary_logits = outputs["boundary_logits"]
    regularizer = dual_task_regularizer(
        semantic_logits, labels, boundary_logits, self._ignore_label, self._temperature,
        self._boundary_threshold, per_image=True)
    parts.update({
        "boundary": (self._boundary_weight, balanced_boundary_bce(
            targets["boundary"], boundary_logits, self._ignore_label, per_image=True)),
        "dual_task_consistency": (self._dual_task_weight,
                                  regularizer["boundary_consistency"]),
        "dual_task_cross_entropy": (self._dual_task_weight,
                                    regularizer["boundary_cross_entropy"]),
    })
    return parts


class SegVitLoss(TaskLoss):
  """SegViT attention-to-mask loss, summed over the deep-supervision outputs, per image.

  targets: `semantic` int [b, h, w]. outputs: `class_logits` [b, S, K, K + 1] and
  `mask_logits` [b, S, h', w', K] (see `segvit_loss`). Returns {"class", "mask_focal",
  "mask_dice", "total"}.

  Args:
    class_weight, focal_weight, dice_weight: term weights (paper: 1, 20, 1).
    no_class_weight: CE weight of "no class" targets (0.1).
    ignore_label: void label.
  """

  def __init__(self, class_weight: float = 1.0, focal_weight: float = 20.0,
               dice_weight: float = 1.0, no_class_weight: float = 0.1,
               ignore_label: int = 255, check_finite: bool = True):
    super().__init__(check_finite)
    self._weights = {"class": class_weight, "mask_focal": focal_weight,
                     "mask_dice": dice_weight}
    self._no_class_weight = no_class_weight
    self._ignore_label = ignore_label

  @property
  def part_names(self):
    return tuple(self._weights)

  def _per_image_losses(self, targets, outputs):
    terms = segvit_loss(outputs, targets["semantic"], self._ignore_label,
                        no_class_weight=self._no_class_weight, per_image=True)
    terms["class"] = terms.pop("class_cross_entropy")
    return {name: (weight, terms[name]) for name, weight in self._weights.items()}


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

  @property
  def part_names(self):
    return ("classification",)

  def _per_image_losses(self, targets, outputs):
    labels = targets["label"] if isinstance(targets, Mapping) else targets
    logits = outputs["logits"] if isinstance(outputs, Mapping) else outputs
    return {"classification": (1.0, label_smoothing_cross_entropy(
        labels, logits, self._label_smoothing))}


__all__ = [
    "weighted_bootstrapped_cross_entropy", "weighted_mse", "weighted_l1",
    "label_smoothing_cross_entropy", "mean_of_nonzero_per_image", "balanced_boundary_bce",
    "masked_cross_entropy", "gumbel_softmax", "boundary_potential", "dual_task_regularizer",
    "gated_scnn_loss", "sigmoid_focal_loss", "atm_loss", "segvit_loss", "TaskLoss",
    "PanopticDeepLabLoss", "SemanticSegmentationLoss", "GatedScnnLoss", "SegVitLoss",
    "ClassificationLoss",
]
