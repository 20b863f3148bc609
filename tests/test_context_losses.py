"""Gated-SCNN and SegViT losses against NumPy references and hand-computed values."""
import math

import numpy as np
import pytest
import tensorflow as tf

from deeplab_axial import losses


def _sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def _numpy_bce(targets, logits):
  return np.maximum(logits, 0) - logits * targets + np.log1p(np.exp(-np.abs(logits)))


def test_balanced_bce_matches_numpy_per_image_beta():
  targets = np.array([[[1, 0, 0], [0, 255, 1]],
                      [[1, 1, 1], [0, 1, 255]]], np.int32)
  logits = np.random.randn(2, 2, 3, 1).astype(np.float32)
  expected_sum, valid_count = 0.0, 0
  for image in range(2):
    valid = targets[image] != 255
    positive = (targets[image] == 1) & valid
    negative = valid & ~positive
    beta = negative.sum() / valid.sum()  # β = |Y−| / |Y|
    weights = np.where(positive, beta, np.where(negative, 1 - beta, 0.0))
    expected_sum += (weights * _numpy_bce(positive, logits[image, ..., 0])).sum()
    valid_count += valid.sum()
  loss = losses.balanced_boundary_bce(targets, logits)
  np.testing.assert_allclose(loss.numpy(), expected_sum / valid_count, rtol=1e-5)


def test_balanced_bce_weight_sum_and_all_negative_image():
  # With logits 0 every BCE term is log 2, so the loss exposes Σw = 2·P·N/(P+N).
  targets = np.zeros([1, 4, 5], np.int32)
  targets[0, :2, :2] = 1  # P = 4, N = 16.
  loss = losses.balanced_boundary_bce(targets, np.zeros([1, 4, 5, 1], np.float32))
  np.testing.assert_allclose(loss.numpy(), math.log(2) * (2 * 4 * 16 / 20) / 20, rtol=1e-6)
  all_negative = losses.balanced_boundary_bce(
      np.zeros([1, 4, 5], np.int32), np.random.randn(1, 4, 5, 1).astype(np.float32))
  assert all_negative.numpy() == 0.0


def test_balanced_bce_rejects_size_mismatch():
  with pytest.raises(ValueError, match="boundary_logits spatial size"):
    losses.balanced_boundary_bce(np.zeros([1, 4, 4], np.int32),
                                         np.zeros([1, 2, 2, 1], np.float32))


def _numpy_potential(probabilities):
  padded = np.pad(probabilities, [(0, 0), (1, 1), (1, 1), (0, 0)], mode="symmetric")
  grad_y = padded[:, 2:, 1:-1] - padded[:, :-2, 1:-1]
  grad_x = padded[:, 1:-1, 2:] - padded[:, 1:-1, :-2]
  return np.sqrt((grad_y**2 + grad_x**2).sum(-1)) / np.sqrt(2)


def test_boundary_potential_of_hard_step_is_one_on_both_sides():
  labels = np.zeros([1, 4, 6], np.int32)
  labels[:, :, 3:] = 1
  potential = losses.boundary_potential(tf.one_hot(labels, 2)).numpy()
  expected = np.zeros([1, 4, 6])
  expected[:, :, 2:4] = 1.0
  np.testing.assert_allclose(potential, expected, atol=1e-6)


def test_gumbel_softmax_sums_to_one_and_is_reproducible():
  logits = np.random.randn(2, 3, 3, 4).astype(np.float32)
  first = losses.gumbel_softmax(logits, 0.5, seed=[1, 2]).numpy()
  np.testing.assert_allclose(first.sum(-1), 1.0, rtol=1e-5)
  np.testing.assert_array_equal(first, losses.gumbel_softmax(logits, 0.5,
                                                                     seed=[1, 2]).numpy())


def test_relaxed_boundary_approaches_hard_boundary_as_temperature_falls():
  labels = np.random.randint(0, 3, size=[2, 8, 8]).astype(np.int32)
  logits = 10.0 * np.eye(3, dtype=np.float32)[labels]
  hard = _numpy_potential(np.eye(3)[labels])
  errors = []
  for temperature in (10.0, 2.0, 0.05):
    relaxed = losses.gumbel_softmax(logits, temperature, seed=[3, 4])
    errors.append(np.abs(losses.boundary_potential(relaxed).numpy() - hard).max())
  assert errors[0] > errors[1] > errors[2] and errors[2] < 1e-4
  terms = losses.dual_task_regularizer(
      logits, labels, np.full([2, 8, 8, 1], -5.0, np.float32), temperature=0.05,
      seed=[3, 4])
  assert terms["boundary_consistency"].numpy() < 1e-4


def test_boundary_cross_entropy_uses_only_confident_boundary_pixels():
  labels = np.random.randint(0, 3, size=[1, 5, 5]).astype(np.int32)
  labels[0, 0, 0] = 255
  logits = np.random.randn(1, 5, 5, 3).astype(np.float32)
  boundary_logits = np.random.randn(1, 5, 5, 1).astype(np.float32) * 3
  confident = (_sigmoid(boundary_logits[..., 0]) > 0.8) & (labels != 255)
  log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  ce = -np.take_along_axis(log_probs, np.where(labels == 255, 0, labels)[..., None], -1)[..., 0]
  terms = losses.dual_task_regularizer(logits, labels, boundary_logits, seed=[0, 0])
  np.testing.assert_allclose(terms["boundary_cross_entropy"].numpy(), ce[confident].mean(),
                             rtol=1e-5)
  none_confident = losses.dual_task_regularizer(
      logits, labels, np.full([1, 5, 5, 1], 1.0, np.float32), seed=[0, 0])  # σ(1) < 0.8
  assert none_confident["boundary_cross_entropy"].numpy() == 0.0


def test_gated_scnn_total_uses_paper_weights():
  labels = np.random.randint(0, 3, size=[1, 6, 6]).astype(np.int32)
  targets = np.random.randint(0, 2, size=[1, 6, 6]).astype(np.int32)
  logits = np.random.randn(1, 6, 6, 3).astype(np.float32)
  boundary_logits = np.random.randn(1, 6, 6, 1).astype(np.float32)
  terms = losses.gated_scnn_loss(logits, boundary_logits, labels, targets,
                                         seed=[5, 6])
  expected = (20 * terms["boundary_bce"] + terms["semantic_cross_entropy"] +
              terms["boundary_consistency"] + terms["boundary_cross_entropy"])
  np.testing.assert_allclose(terms["total"].numpy(), expected.numpy(), rtol=1e-6)
  assert all(np.isfinite(v.numpy()) for v in terms.values())


def test_atm_loss_hand_case_at_zero_logits():
  # 1 image 2×2, K = 2, class 0 on 3 pixels, class 1 absent. Mask logits 0 → p = 0.5.
  labels = np.array([[[0, 0], [0, 255]]], np.int32)
  class_logits = np.zeros([1, 2, 3], np.float32)
  mask_logits = np.zeros([1, 2, 2, 2], np.float32)
  terms = losses.atm_loss(class_logits, mask_logits, labels)
  # CE = log 3 for every query; weighted mean with weights (1, 0.1) is still log 3.
  np.testing.assert_allclose(terms["class_cross_entropy"].numpy(), math.log(3), rtol=1e-6)
  # Focal at p = 0.5: log2·0.25·(0.25 for the 3 positives, 0.75 for the void negative) / 4.
  focal = math.log(2) * 0.25 * (3 * 0.25 + 1 * 0.75) / 4
  np.testing.assert_allclose(terms["mask_focal"].numpy(), focal, rtol=1e-6)
  dice = 1 - (2 * 0.5 * 3 + 1) / (0.5 * 4 + 3 + 1)
  np.testing.assert_allclose(terms["mask_dice"].numpy(), dice, rtol=1e-6)
  np.testing.assert_allclose(terms["total"].numpy(), math.log(3) + 20 * focal + dice,
                             rtol=1e-6)
  excluded = losses.atm_loss(class_logits, mask_logits, labels,
                                     ignore_pixels_in_masks=False)
  np.testing.assert_allclose(excluded["mask_focal"].numpy(),
                             math.log(2) * 0.25 * 0.25, rtol=1e-6)


def _numpy_atm(class_logits, mask_logits, labels, num_classes):
  batch = labels.shape[0]
  present = np.stack([[np.any(labels[b] == k) for k in range(num_classes)]
                      for b in range(batch)])
  targets = np.where(present, np.arange(num_classes)[None], num_classes)
  weights = np.where(present, 1.0, 0.1)
  log_probs = class_logits - np.log(np.exp(class_logits).sum(-1, keepdims=True))
  ce = -np.take_along_axis(log_probs, targets[..., None], -1)[..., 0]
  class_loss = (weights * ce).sum() / weights.sum()
  focal_sum = dice_sum = 0.0
  for b in range(batch):
    for k in range(num_classes):
      if not present[b, k]:
        continue
      t = (labels[b] == k).astype(np.float64)
      x = mask_logits[b, ..., k].astype(np.float64)
      p = _sigmoid(x)
      p_t = p * t + (1 - p) * (1 - t)
      alpha_t = 0.25 * t + 0.75 * (1 - t)
      focal_sum += (alpha_t * (1 - p_t)**2 * _numpy_bce(t, x)).mean()
      dice_sum += 1 - (2 * (p * t).sum() + 1) / (p.sum() + t.sum() + 1)
  num_masks = max(present.sum(), 1)
  return class_loss, focal_sum / num_masks, dice_sum / num_masks


def test_atm_loss_matches_numpy_fixed_assignment():
  labels = np.random.randint(0, 3, size=[2, 4, 4]).astype(np.int32)
  labels[1][labels[1] == 2] = 255
  class_logits = np.random.randn(2, 4, 5).astype(np.float32)
  mask_logits = np.random.randn(2, 4, 4, 4).astype(np.float32)
  terms = losses.atm_loss(class_logits, mask_logits, labels)
  expected = _numpy_atm(class_logits, mask_logits, labels, 4)
  for name, value in zip(("class_cross_entropy", "mask_focal", "mask_dice"), expected):
    np.testing.assert_allclose(terms[name].numpy(), value, rtol=1e-5, err_msg=name)


def test_atm_loss_only_void_image_is_finite_and_segvit_loss_sums_outputs():
  labels = np.full([1, 4, 4], 255, np.int32)
  terms = losses.atm_loss(np.random.randn(1, 2, 3).astype(np.float32),
                                  np.random.randn(1, 2, 2, 2).astype(np.float32), labels)
  assert terms["mask_focal"].numpy() == 0.0 and terms["mask_dice"].numpy() == 0.0
  assert np.isfinite(terms["class_cross_entropy"].numpy())
  outputs = {"class_logits": np.random.randn(1, 3, 2, 3).astype(np.float32),
             "mask_logits": np.random.randn(1, 3, 2, 2, 2).astype(np.float32)}
  labels = np.random.randint(0, 2, size=[1, 4, 4]).astype(np.int32)
  summed = losses.segvit_loss(outputs, labels)
  expected = sum(losses.atm_loss(outputs["class_logits"][:, i],
                                         outputs["mask_logits"][:, i], labels)["total"]
                 for i in range(3))
  np.testing.assert_allclose(summed["total"].numpy(), expected.numpy(), rtol=1e-6)
  with pytest.raises(ValueError, match="num_outputs"):
    losses.segvit_loss(outputs, labels, num_outputs=4)
