"""Tests of deeplab_axial.losses against NumPy formulas and hand-computed cases."""
import numpy as np
import pytest
import tensorflow as tf

from deeplab_axial import losses


def _log_softmax(logits):
  logits = logits.astype(np.float64)
  shifted = logits - logits.max(-1, keepdims=True)
  return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def _nonzero_mean(values):
  nonzero = np.count_nonzero(values)
  return values.sum() / nonzero if nonzero else 0.0


def _bootstrapped_ce_reference(labels, logits, weights, top_k_fraction, ignore_label):
  """Per image: top-k of the weighted CE, summed, / their non-zero count (papers §5.3)."""
  result = []
  for image_labels, image_logits, image_weights in zip(labels, logits, weights):
    log_probs = _log_softmax(image_logits).reshape(-1, image_logits.shape[-1])
    flat_labels = image_labels.reshape(-1)
    valid = flat_labels != ignore_label
    pixel = np.zeros(flat_labels.shape)
    pixel[valid] = -log_probs[valid, flat_labels[valid]]
    pixel *= image_weights.reshape(-1)
    k = max(int(round(top_k_fraction * pixel.size)), 1)
    result.append(_nonzero_mean(np.sort(pixel)[::-1][:k]))
  return np.array(result)


def _regression_reference(y_true, y_pred, weights, error):
  per_pixel = error(y_pred.astype(np.float64) - y_true).mean(-1) * weights
  return np.array([_nonzero_mean(image) for image in per_pixel])


def _random_panoptic_batch(rng, batch=4, height=6, width=7, classes=5):
  labels = rng.integers(0, classes, (batch, height, width))
  labels[rng.random(labels.shape) < 0.2] = 255
  weights = rng.choice([0.0, 1.0, 3.0], size=labels.shape, p=[0.2, 0.6, 0.2])
  targets = {
      "semantic": labels.astype(np.int32),
      "semantic_weights": weights.astype(np.float32),
      "center_heatmap": rng.random((batch, height, width, 1)).astype(np.float32),
      "center_weights": (rng.random((batch, height, width)) < 0.8).astype(np.float32),
      "center_offset": rng.normal(size=(batch, height, width, 2)).astype(np.float32) * 5,
      "offset_weights": (rng.random((batch, height, width)) < 0.5).astype(np.float32),
  }
  outputs = {
      "semantic_logits": rng.normal(size=(batch, height, width, classes)).astype(np.float32),
      "center_heatmap": rng.random((batch, height, width, 1)).astype(np.float32),
      "center_offset": rng.normal(size=(batch, height, width, 2)).astype(np.float32) * 5,
  }
  return targets, outputs


@pytest.mark.parametrize("top_k_fraction", [0.2, 0.5, 1.0])
def test_bootstrapped_cross_entropy_matches_numpy(top_k_fraction):
  targets, outputs = _random_panoptic_batch(np.random.default_rng(0))
  got = losses.weighted_bootstrapped_cross_entropy(
      targets["semantic"], outputs["semantic_logits"], targets["semantic_weights"],
      top_k_fraction=top_k_fraction)
  expected = _bootstrapped_ce_reference(targets["semantic"], outputs["semantic_logits"],
                                        targets["semantic_weights"], top_k_fraction, 255)
  assert got.shape == (4,)
  np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_bootstrapped_cross_entropy_hand_case():
  # 10 pixels, 2 classes, logits (0, z) and label 0: CE = log(1 + e^z).
  z = np.array([0.0, 1.0, 2.0, 3.0, -1.0, 5.0, 4.0, 0.5, 0.0, 0.0], np.float32)
  logits = np.stack([np.zeros_like(z), z], -1).reshape(1, 2, 5, 2)
  labels = np.zeros((1, 2, 5), np.int32)
  labels[0, 1, 0] = 255  # z=5, the hardest pixel, is ignored
  weights = np.ones((1, 2, 5), np.float32)
  weights[0, 1, 1] = 3.0  # z=4 weighted 3x
  ce = np.log1p(np.exp(z.astype(np.float64)))
  # k = round(0.2 * 10) = 2 hardest weighted losses: 3·ce(4) and ce(3).
  got = losses.weighted_bootstrapped_cross_entropy(labels, logits, weights, 0.2)
  np.testing.assert_allclose(got, [(3 * ce[6] + ce[3]) / 2], rtol=1e-6)
  # Only one pixel has non-zero weight: the zero entries among the top k do not count.
  only_one = np.zeros_like(weights)
  only_one[0, 0, 2] = 2.0
  got = losses.weighted_bootstrapped_cross_entropy(labels, logits, only_one, 0.5)
  np.testing.assert_allclose(got, [2 * ce[2]], rtol=1e-6)
  # Labels given as [b, h, w, 1] behave the same.
  got = losses.weighted_bootstrapped_cross_entropy(labels[..., None], logits, weights, 0.2)
  np.testing.assert_allclose(got, [(3 * ce[6] + ce[3]) / 2], rtol=1e-6)


def test_regression_losses_match_numpy_and_hand_case():
  targets, outputs = _random_panoptic_batch(np.random.default_rng(1))
  mse = losses.weighted_mse(targets["center_heatmap"], outputs["center_heatmap"],
                            targets["center_weights"])
  np.testing.assert_allclose(mse, _regression_reference(
      targets["center_heatmap"], outputs["center_heatmap"], targets["center_weights"],
      np.square), rtol=1e-5)
  l1 = losses.weighted_l1(targets["center_offset"], outputs["center_offset"],
                          targets["offset_weights"])
  np.testing.assert_allclose(l1, _regression_reference(
      targets["center_offset"], outputs["center_offset"], targets["offset_weights"],
      np.abs), rtol=1e-5)

  # Hand case: 2 pixels with weight 1 and errors (1, 3) and (2, 2); one with weight 0.
  y_true = np.zeros((1, 1, 3, 2), np.float32)
  y_pred = np.array([[[[1, 3], [2, -2], [7, 7]]]], np.float32)
  weights = np.array([[[1, 1, 0]]], np.float32)
  np.testing.assert_allclose(losses.weighted_l1(y_true, y_pred, weights), [(2 + 2) / 2])
  np.testing.assert_allclose(losses.weighted_mse(y_true, y_pred, weights), [(5 + 4) / 2])
  np.testing.assert_array_equal(losses.weighted_mse(y_true, y_pred, np.zeros_like(weights)),
                                [0.0])  # no weighted pixel: 0, not NaN


def test_panoptic_loss_parts_and_total():
  targets, outputs = _random_panoptic_batch(np.random.default_rng(2))
  loss = losses.PanopticDeepLabLoss(semantic_weight=1.5, center_weight=200.0,
                                    offset_weight=0.01, top_k_fraction=0.2)
  got = {k: v.numpy() for k, v in loss(targets, outputs, global_batch_size=8).items()}
  semantic = _bootstrapped_ce_reference(targets["semantic"], outputs["semantic_logits"],
                                        targets["semantic_weights"], 0.2, 255)
  center = _regression_reference(targets["center_heatmap"], outputs["center_heatmap"],
                                 targets["center_weights"], np.square)
  offset = _regression_reference(targets["center_offset"], outputs["center_offset"],
                                 targets["offset_weights"], np.abs)
  np.testing.assert_allclose(got["semantic"], 1.5 * semantic.sum() / 8, rtol=1e-5)
  np.testing.assert_allclose(got["center"], 200.0 * center.sum() / 8, rtol=1e-5)
  np.testing.assert_allclose(got["offset"], 0.01 * offset.sum() / 8, rtol=1e-5)
  np.testing.assert_allclose(got["total"], got["semantic"] + got["center"] + got["offset"],
                             rtol=1e-6)


def test_float16_outputs_give_float32_losses():
  targets, outputs = _random_panoptic_batch(np.random.default_rng(3))
  half = {k: tf.constant(v, tf.float16) for k, v in outputs.items()}
  rounded = {k: v.numpy().astype(np.float32) for k, v in half.items()}
  loss = losses.PanopticDeepLabLoss()
  got = loss(targets, half, 4)
  expected = loss(targets, rounded, 4)
  for name, value in got.items():
    assert value.dtype == tf.float32, name
    np.testing.assert_allclose(value, expected[name], rtol=1e-6, err_msg=name)


def test_sum_over_replicas_equals_single_device_loss(two_cpu_strategy):
  targets, outputs = _random_panoptic_batch(np.random.default_rng(4), batch=4)
  loss = losses.PanopticDeepLabLoss()
  single = loss(targets, outputs, global_batch_size=4)

  def replica_slice(context):
    start = 2 * context.replica_id_in_sync_group
    return ({k: v[start:start + 2] for k, v in targets.items()},
            {k: v[start:start + 2] for k, v in outputs.items()})

  distributed = two_cpu_strategy.experimental_distribute_values_from_function(replica_slice)
  per_replica = two_cpu_strategy.run(
      tf.function(lambda t, o: loss(t, o, global_batch_size=4)), args=distributed)
  for name, value in single.items():
    summed = two_cpu_strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica[name], axis=None)
    np.testing.assert_allclose(summed, value, rtol=1e-6, err_msg=name)


@pytest.mark.parametrize("in_tf_function", [False, True])
def test_nan_loss_raises_naming_the_part(in_tf_function):
  targets, outputs = _random_panoptic_batch(np.random.default_rng(5))
  outputs["center_heatmap"][1, 2, 3, 0] = np.nan
  loss = losses.PanopticDeepLabLoss()
  call = tf.function(loss) if in_tf_function else loss
  with pytest.raises(tf.errors.InvalidArgumentError, match="center loss is NaN/Inf"):
    call(targets, outputs, 4)
  unchecked = losses.PanopticDeepLabLoss(check_finite=False)(targets, outputs, 4)
  assert np.isnan(unchecked["center"]) and np.isnan(unchecked["total"])  # never zeroed
  assert np.isfinite(unchecked["semantic"])


def test_classification_loss_with_label_smoothing():
  rng = np.random.default_rng(6)
  logits = rng.normal(size=(5, 7)).astype(np.float32)
  labels = rng.integers(0, 7, 5)
  smoothing = 0.1
  smoothed = np.full((5, 7), smoothing / 7) + (1 - smoothing) * np.eye(7)[labels]
  expected = -(smoothed * _log_softmax(logits)).sum(-1)
  np.testing.assert_allclose(
      losses.label_smoothing_cross_entropy(labels, logits, smoothing), expected, rtol=1e-5)
  got = losses.ClassificationLoss(label_smoothing=smoothing)({"label": labels}, logits, 10)
  np.testing.assert_allclose(got["classification"], expected.sum() / 10, rtol=1e-5)
  np.testing.assert_allclose(got["total"], got["classification"])
  no_smoothing = losses.label_smoothing_cross_entropy(labels, logits, 0.0)
  np.testing.assert_allclose(no_smoothing, -_log_softmax(logits)[np.arange(5), labels],
                             rtol=1e-5)


@pytest.mark.parametrize("build, message", [
    (lambda: losses.PanopticDeepLabLoss(top_k_fraction=0.0), "top_k_fraction"),
    (lambda: losses.weighted_bootstrapped_cross_entropy(
        np.zeros((1, 2, 2)), np.zeros((1, 2, 2, 3)), np.ones((1, 2, 2)), 1.5),
     "top_k_fraction"),
    (lambda: losses.ClassificationLoss(label_smoothing=1.0), "label_smoothing"),
])
def test_bad_arguments_raise_value_error(build, message):
  with pytest.raises(ValueError, match=message):
    build()


def test_nan_propagates_under_xla_where_the_check_is_compiled_away():
  targets, outputs = _random_panoptic_batch(np.random.default_rng(7))
  outputs["center_offset"][0, 0, 0, 1] = np.inf
  got = tf.function(losses.PanopticDeepLabLoss(), jit_compile=True)(targets, outputs, 4)
  assert not np.isfinite(got["offset"]) and not np.isfinite(got["total"])
