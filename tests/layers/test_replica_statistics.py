"""replica_moments / synchronize on two replicas against float64 NumPy over the global batch."""
import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from deeplab_axial.layers import replica_statistics


def _per_replica_run(strategy, function, *global_inputs):
  """`function` on each replica's half of `global_inputs`; per-replica results stacked."""
  halves = [np.split(x, 2) for x in global_inputs]

  def value_fn(context):
    return tuple(tf.constant(parts[context.replica_id_in_sync_group]) for parts in halves)

  inputs = strategy.experimental_distribute_values_from_function(value_fn)
  results = strategy.run(tf.function(function), args=inputs)
  return [np.stack([r.numpy() for r in strategy.experimental_local_results(result)])
          for result in tf.nest.flatten(results)]


def _badly_conditioned_batch():
  """Channels whose mean is 300 to 1000 times their spread; the halves differ."""
  rng = np.random.default_rng(5)
  values = rng.normal(0.0, 1.0, size=(4, 5, 6, 3))
  values[2:] = 1.5 * values[2:] + 0.5
  return (values + np.array([300.0, -700.0, 1000.0])).astype(np.float32)


def test_moments_equal_float64_moments_of_the_global_batch(two_cpu_strategy):
  x = _badly_conditioned_batch()
  mean, variance = _per_replica_run(
      two_cpu_strategy, lambda t: replica_statistics.replica_moments(t, [0, 1, 2]), x)
  exact = x.astype(np.float64)
  for replica in range(2):
    np.testing.assert_allclose(mean[replica], exact.mean(axis=(0, 1, 2)), rtol=1e-6)
    # E[x^2] - E[x]^2 in float32 is off by up to ~eps * 1e6 here, 6% of the variance.
    np.testing.assert_allclose(variance[replica], exact.var(axis=(0, 1, 2)), rtol=1e-4)


def test_mask_and_keepdims_with_a_replica_that_keeps_nothing(two_cpu_strategy):
  x = _badly_conditioned_batch()
  mask = np.ones(x.shape[:-1], np.float32)
  mask[2:] = 0.0  # the second replica's examples are all masked out
  mask[0, :2] = 0.0
  mean, variance = _per_replica_run(
      two_cpu_strategy,
      lambda t, m: replica_statistics.replica_moments(t, [0, 1, 2], keepdims=True, mask=m),
      x, mask)
  kept = x.astype(np.float64)[mask.astype(bool)]  # [kept positions, channels]
  assert mean.shape == variance.shape == (2, 1, 1, 1, 3)
  for replica in range(2):
    np.testing.assert_allclose(mean[replica].ravel(), kept.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(variance[replica].ravel(), kept.var(axis=0), rtol=1e-4)


def test_a_replica_without_examples_changes_nothing(two_cpu_strategy):
  """A last, partial global batch can leave a replica with zero examples."""
  x = _badly_conditioned_batch()

  def value_fn(context):
    return tf.constant(x if context.replica_id_in_sync_group == 0 else x[:0])

  inputs = two_cpu_strategy.experimental_distribute_values_from_function(value_fn)
  results = two_cpu_strategy.run(
      tf.function(lambda t: replica_statistics.replica_moments(t, [0, 1, 2])), args=(inputs,))
  exact = x.astype(np.float64)
  for mean, variance in zip(*[two_cpu_strategy.experimental_local_results(r)
                              for r in results]):
    np.testing.assert_allclose(mean.numpy(), exact.mean(axis=(0, 1, 2)), rtol=1e-6)
    np.testing.assert_allclose(variance.numpy(), exact.var(axis=(0, 1, 2)), rtol=1e-4)


def test_gradients_equal_one_device_batch_norm_of_the_global_batch(two_cpu_strategy):
  """Each replica's loss weighs its half of the normalized batch; the gradient of the
  sum of the replicas' losses (what a distributed step applies) equals the one-device
  gradient of the whole batch normalized with tf.nn.moments."""
  rng = np.random.default_rng(6)
  x = rng.normal(2.0, 3.0, size=(4, 3, 2, 5)).astype(np.float32)
  x[2:] += 1.0
  loss_weights = rng.normal(size=x.shape).astype(np.float32)

  def gradient(moments, t, weights):
    with tf.GradientTape() as tape:
      tape.watch(t)
      mean, variance = moments(t, [0, 1, 2])
      loss = tf.reduce_sum(weights * (t - mean) * tf.math.rsqrt(variance + 1e-3))
    return tape.gradient(loss, t)

  distributed = np.concatenate(_per_replica_run(
      two_cpu_strategy, lambda t, w: gradient(replica_statistics.replica_moments, t, w),
      x, loss_weights)[0])
  one_device = gradient(tf.nn.moments, tf.constant(x), tf.constant(loss_weights))
  np.testing.assert_allclose(distributed, one_device.numpy(), rtol=1e-4, atol=1e-6)


def test_float16_inputs_are_reduced_in_float32(two_cpu_strategy):
  x = np.random.default_rng(7).normal(300.0, 0.5, size=(4, 8, 8, 2)).astype(np.float16)
  mean, variance = _per_replica_run(
      two_cpu_strategy, lambda t: replica_statistics.replica_moments(t, [0, 1, 2]), x)
  assert mean.dtype == variance.dtype == np.float16
  exact = x.astype(np.float64)
  np.testing.assert_allclose(variance[0], exact.var(axis=(0, 1, 2)), rtol=2e-3)


def test_synchronized_keras_batch_norm_normalizes_like_one_device(two_cpu_strategy):
  """The hook replaces tf_keras' one-pass synchronized moments: outputs of the badly
  conditioned batch match float64 NumPy batch norm over the global batch."""
  x = _badly_conditioned_batch()
  with two_cpu_strategy.scope():
    layer = tf_keras.layers.BatchNormalization(epsilon=1e-3)
    layer.build(x.shape)
  replica_statistics.synchronize(layer)
  assert layer.synchronized and not layer.fused
  outputs = np.concatenate(_per_replica_run(
      two_cpu_strategy, lambda t: layer(t, training=True), x)[0])
  exact = x.astype(np.float64)
  expected = (exact - exact.mean(axis=(0, 1, 2))) / np.sqrt(exact.var(axis=(0, 1, 2)) + 1e-3)
  # The inputs themselves are float32 values near 1e3 (spacing 6e-5): the float64
  # reference starts from the same rounded inputs, so only the statistics can differ.
  np.testing.assert_allclose(outputs, expected, atol=2e-3)


def test_synchronize_refuses_other_layers():
  with pytest.raises(TypeError, match="tf_keras BatchNormalization layer, got Dense"):
    replica_statistics.synchronize(tf_keras.layers.Dense(2))
