"""Losses of Gated-SCNN (boundary BCE, dual-task regularizer) and SegViT (ATM loss).

Plain functions of tensors returning float32 scalars (or dicts of them), usable in a
custom training loop under `tf.distribute` (they average over the local replica's batch).

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
* The semantic CE is plain (mean over valid pixels), not the released per-image
  class-weighted variant.

SegViT (Zhang et al. 2022; other_seeds.md §5.3): fixed assignment query i ↔ class i;
CE over K + 1 classes ("no class" weight 0.1) + 20·focal + 1·dice on the masks of the
classes present in each image, normalised by the number of present masks (≥ 1), summed
over the deep-supervision outputs.
"""
import math
from typing import Dict, Optional

import tensorflow as tf

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


def _safe_mean(values, mask):
  """Mean of `values` over `mask` (both the same shape); 0 when the mask is empty."""
  mask = tf.cast(mask, tf.float32)
  return tf.math.divide_no_nan(tf.reduce_sum(values * mask), tf.reduce_sum(mask))


def balanced_boundary_bce(boundary_targets, boundary_logits,
                          ignore_label: int = 255) -> tf.Tensor:
  """Class-balanced boundary binary cross-entropy (Gated-SCNN, HED-style).

  Per image, with P positive and N negative valid pixels, positives are weighted
  β = N / (P + N) and negatives 1 − β = P / (P + N); the weighted per-pixel BCE is
  averaged over all valid pixels of the batch. Void pixels (`ignore_label`) get weight 0.

  Args:
    boundary_targets: int `[batch, height, width]` (or `[..., 1]`), values 0, 1 or
      `ignore_label` (as made by `ops.semantic_boundaries`).
    boundary_logits: float `[batch, height, width, 1]`, same spatial size.
    ignore_label: the void value in the targets.

  Returns:
    float32 scalar.
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
  return tf.math.divide_no_nan(tf.reduce_sum(weights * losses), tf.reduce_sum(valid))


def masked_cross_entropy(labels, logits, mask=None, ignore_label: int = 255) -> tf.Tensor:
  """Softmax cross-entropy averaged over valid pixels (and `mask`, if given); 0 if none.

  Args:
    labels: int `[batch, height, width]`.
    logits: float `[batch, height, width, num_classes]`.
    mask: optional bool `[batch, height, width]` restricting the pixels.
    ignore_label: void label, excluded.
  """
  labels = _squeeze_channel(labels, "labels")
  logits = tf.cast(logits, tf.float32)
  _check_same_size(labels, logits, "labels", "logits")
  valid = tf.not_equal(labels, ignore_label)
  if mask is not None:
    valid = tf.logical_and(valid, mask)
  safe_labels = tf.where(valid, labels, 0)
  losses = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=safe_labels, logits=logits)
  return _safe_mean(losses, valid)


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
                          boundary_threshold: float = 0.8,
                          seed=None) -> Dict[str, tf.Tensor]:
  """The two Gated-SCNN dual-task consistency terms (unweighted).

  Args:
    semantic_logits: float `[batch, height, width, num_classes]`.
    labels: int `[batch, height, width]` semantic ground truth.
    boundary_logits: float `[batch, height, width, 1]` shape-stream output.
    ignore_label: void label.
    temperature: Gumbel-softmax τ.
    boundary_threshold: pixels with σ(boundary logit) above it enter L_reg←.
    seed: optional stateless seed for the Gumbel noise.

  Returns:
    dict with float32 scalars `boundary_consistency` (L_reg→) and
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
      _safe_mean(difference, tf.logical_and(consistent_region, predicted > _EPSILON)) +
      _safe_mean(difference, tf.logical_and(consistent_region, target > _EPSILON)))

  on_boundary = tf.sigmoid(tf.cast(boundary_logits, tf.float32))[..., 0] > boundary_threshold
  boundary_ce = masked_cross_entropy(labels, semantic_logits, mask=on_boundary,
                                     ignore_label=ignore_label)
  return {"boundary_consistency": consistency, "boundary_cross_entropy": boundary_ce}


def gated_scnn_loss(semantic_logits, boundary_logits, labels, boundary_targets,
                    ignore_label: int = 255, boundary_weight: float = 20.0,
                    semantic_weight: float = 1.0, consistency_weight: float = 1.0,
                    boundary_cross_entropy_weight: float = 1.0, temperature: float = 1.0,
                    boundary_threshold: float = 0.8, seed=None) -> Dict[str, tf.Tensor]:
  """Gated-SCNN total loss λ1·BCE + λ2·CE + λ3·L_reg→ + λ4·L_reg← (paper weights).

  Args:
    semantic_logits: float `[batch, H, W, num_classes]`.
    boundary_logits: float `[batch, H, W, 1]`.
    labels: int `[batch, H, W]`.
    boundary_targets: int `[batch, H, W]` from `ops.semantic_boundaries(labels)`.
    Remaining arguments: loss weights λ1..λ4 and `dual_task_regularizer` settings.

  Returns:
    dict of float32 scalars: `boundary_bce`, `semantic_cross_entropy`,
    `boundary_consistency`, `boundary_cross_entropy` (unweighted) and `total`.
  """
  terms = {
      "boundary_bce": balanced_boundary_bce(boundary_targets, boundary_logits, ignore_label),
      "semantic_cross_entropy": masked_cross_entropy(labels, semantic_logits,
                                                     ignore_label=ignore_label),
  }
  terms.update(dual_task_regularizer(semantic_logits, labels, boundary_logits,
                                     ignore_label, temperature, boundary_threshold, seed))
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
             ignore_pixels_in_masks: bool = True) -> Dict[str, tf.Tensor]:
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

  Returns:
    dict of float32 scalars `class_cross_entropy`, `mask_focal`, `mask_dice` (unweighted)
    and `total` (weighted).
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
  class_loss = tf.math.divide_no_nan(tf.reduce_sum(class_weights * class_ce),
                                     tf.reduce_sum(class_weights))

  mask_logits = tf.image.resize(mask_logits, tf.shape(labels)[1:3])
  if ignore_pixels_in_masks:
    pixel_weights = tf.ones_like(target_masks[..., :1])
  else:
    pixel_weights = tf.cast(tf.not_equal(labels, ignore_label), tf.float32)[..., tf.newaxis]
  num_pixels = tf.maximum(tf.reduce_sum(pixel_weights, axis=[1, 2]), 1.0)  # [batch, 1]
  num_masks = tf.maximum(tf.reduce_sum(present_float), 1.0)

  focal = sigmoid_focal_loss(target_masks, mask_logits, focal_alpha, focal_gamma)
  focal_per_mask = tf.reduce_sum(focal * pixel_weights, axis=[1, 2]) / num_pixels
  probabilities = tf.sigmoid(mask_logits) * pixel_weights
  numerator = 2.0 * tf.reduce_sum(probabilities * target_masks, axis=[1, 2]) + 1.0
  denominator = (tf.reduce_sum(probabilities, axis=[1, 2]) +
                 tf.reduce_sum(target_masks, axis=[1, 2]) + 1.0)
  dice_per_mask = 1.0 - numerator / denominator
  focal_loss = tf.reduce_sum(focal_per_mask * present_float) / num_masks
  dice_loss = tf.reduce_sum(dice_per_mask * present_float) / num_masks
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
    **atm_loss_kwargs: forwarded to `atm_loss`.

  Returns:
    dict of float32 scalars with the summed terms of `atm_loss`.
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
