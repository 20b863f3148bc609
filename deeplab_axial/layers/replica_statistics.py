"""Batch statistics over the replicas of a `tf.distribute` step, numerically stable.

tf_keras' synchronized batch norm all-reduces each replica's sum and squared sum and
takes E[x^2] - E[x]^2. In float32 that difference cancels when a channel's mean is large
next to its spread: two replicas then normalize differently from one device holding the
whole batch (up to 1e-3 on the outputs of an axial-attention layer whose weights were
drawn at random, against 3e-5 for one device). Here each replica computes its own count,
mean and sum of squared deviations in two passes, one all-gather shares them, and each
replica combines them with the pairwise formula of Chan et al. (the sum of squared
deviations of a union = those of the parts + n_i (mean_i - mean)^2), as PyTorch's
SyncBatchNorm does. Nothing cancels beyond what one device's two-pass moments lose.
"""
import types

import tensorflow as tf
import tf_keras


def replica_moments(inputs, axes, keepdims=False, mask=None):
  """Mean and biased variance of `inputs` over `axes` and over every replica in sync.

  Args:
    inputs: a float tensor, e.g. `[batch, height, width, channels]`.
    axes: the axes reduced on each replica, e.g. `[0, 1, 2]`.
    keepdims: keep the reduced axes with length 1.
    mask: optional weights shaped like `inputs` without its last axis (1 keeps a
      position, 0 drops it), as tf_keras batch normalization passes them.

  Returns:
    (mean, variance), each shaped like `inputs` reduced over `axes`. float16 and
    bfloat16 inputs are reduced in float32 and the results cast back. Outside a replica
    context with several replicas, the moments of this replica's `inputs`.
  """
  context = tf.distribute.get_replica_context()
  if context is None or context.num_replicas_in_sync == 1:
    if mask is None:
      return tf.nn.moments(inputs, axes, keepdims=keepdims)
    return tf.nn.weighted_moments(inputs, axes, _mask_weights(mask, inputs),
                                  keepdims=keepdims)
  values = tf.cast(inputs, tf.float32) if inputs.dtype in (tf.float16, tf.bfloat16) else inputs
  if mask is None:
    total = tf.reduce_sum(values, axes, keepdims=True)
    size = tf.reduce_prod(tf.gather(tf.shape(values), axes))
    # zeros_like + size keeps total's static shape (tf.fill would not): a gathered value
    # of unknown shape costs collectives an extra round for the shapes.
    count = tf.zeros_like(total) + tf.cast(size, values.dtype)
    mean = tf.math.divide_no_nan(total, count)  # 0, not NaN, on a replica with no data
    squared_deviations = tf.reduce_sum(tf.square(values - mean), axes, keepdims=True)
  else:
    weights = tf.ones_like(values) * _mask_weights(mask, values)
    count = tf.reduce_sum(weights, axes, keepdims=True)
    mean = tf.math.divide_no_nan(tf.reduce_sum(weights * values, axes, keepdims=True),
                                 count)
    squared_deviations = tf.reduce_sum(weights * tf.square(values - mean), axes,
                                       keepdims=True)
  # [replicas, 3, ...]: one collective instead of one all-reduce per statistic.
  local = tf.stack([count, mean, squared_deviations])
  gathered = context.all_gather(local[None], axis=0)
  gathered.set_shape([None, *local.shape])  # multi-worker collectives drop it
  counts, means, deviations = tf.unstack(gathered, axis=1)
  total = tf.reduce_sum(counts, axis=0)
  mean = tf.math.divide_no_nan(tf.reduce_sum(counts * means, axis=0), total)
  between = tf.reduce_sum(counts * tf.square(means - mean), axis=0)
  variance = tf.math.divide_no_nan(tf.reduce_sum(deviations, axis=0) + between, total)
  if not keepdims:
    mean, variance = tf.squeeze(mean, axes), tf.squeeze(variance, axes)
  return tf.cast(mean, inputs.dtype), tf.cast(variance, inputs.dtype)


def _mask_weights(mask, like):
  """A mask shaped like `like` without its last axis -> weights broadcastable to it."""
  return tf.expand_dims(tf.cast(mask, like.dtype), axis=-1)


def synchronize(batch_norm):
  """Makes a tf_keras batch norm normalize with `replica_moments` in training mode.

  Sets `synchronized` (read by `recompute.check_pausable` and saved in the config) and
  turns the fused kernel off (it computes per-replica moments); the layer's moments then
  come from `replica_moments` instead of tf_keras' one-pass E[x^2] - E[x]^2.

  Args:
    batch_norm: a `tf_keras.layers.BatchNormalization` (or subclass) instance.
  """
  if not isinstance(batch_norm, tf_keras.layers.BatchNormalization):
    raise TypeError(f"synchronize needs a tf_keras BatchNormalization layer, got "
                    f"{type(batch_norm).__name__}")
  batch_norm.fused = False
  batch_norm.synchronized = True
  # The hook tf_keras' `_moments` calls for the training statistics.
  batch_norm._calculate_mean_and_var = types.MethodType(  # pylint: disable=protected-access
      _replica_mean_and_var, batch_norm)


def _replica_mean_and_var(layer, inputs, reduction_axes, keep_dims, mask=None):
  """tf_keras' `_calculate_mean_and_var` hook (its signature), by `replica_moments`."""
  del layer  # the hook is a bound method; the statistics need only the inputs
  return replica_moments(inputs, reduction_axes, keepdims=keep_dims, mask=mask)
