"""Tests of the training-memory model against hand-counted graphs."""
import pytest
import tensorflow as tf
import tf_keras

from deeplab_axial import memory_model


def test_peak_live_bytes_of_a_hand_counted_chain():
  @tf.function
  def chain(x):
    a = x * 2.0  # 4000 bytes
    b = a + 1.0  # a and b live (8000), then a is freed
    c = tf.concat([b, b], 0)  # b and c live: 4000 + 8000 = 12000, the peak
    return tf.reduce_sum(c)  # c and a scalar: 8004

  graph = chain.get_concrete_function(tf.TensorSpec([1000], tf.float32)).graph
  assert memory_model.peak_live_bytes(graph) == (12000, 0)


def test_reshape_allocates_nothing():
  @tf.function
  def reshaped(x):
    return tf.reduce_sum(tf.reshape(x * 2.0, [10, 100]) + 1.0)  # x*2 and the sum: 8000

  graph = reshaped.get_concrete_function(tf.TensorSpec([1000], tf.float32)).graph
  assert memory_model.peak_live_bytes(graph) == (8000, 0)


def test_training_estimate_counts_the_activations_and_gradients():
  # Dense 8 -> 16 on [4, 3, 3, 8] inputs: output 4*3*3*16 floats = 2304 bytes, kept for
  # nothing (a linear layer's backward needs only its input), so the estimate must lie
  # between the weight gradients alone and everything the step creates.
  inputs = tf_keras.Input([3, 3, 8])
  model = tf_keras.Model(inputs, tf_keras.layers.Dense(16)(inputs))
  estimate = memory_model.estimate_training_memory_bytes(model, 4, 3, channels=8)
  gradient_bytes = (8 * 16 + 16) * 4
  assert gradient_bytes <= estimate <= gradient_bytes + 4 * 2304


@pytest.mark.parametrize("batch,crop", [(0, 8), (2, (8, -1)), (1.5, 8)])
def test_bad_sizes_raise(batch, crop):
  model = tf_keras.Sequential([tf_keras.layers.Dense(2)])
  with pytest.raises(ValueError, match="positive int"):
    memory_model.estimate_training_memory_bytes(model, batch, crop)


def test_unneeded_ops_and_unconsumed_outputs_hold_no_memory():
  @tf.function
  def split_chain(x):
    tf.zeros([100000])  # nothing needs it: the runtime prunes it
    a = x * 2.0  # 4000 bytes
    p, _ = tf.split(a, 2)  # a, p and the unused half live: 8000; then only p (2000)
    c = tf.concat([p] * 5, 0)  # p and c live: 2000 + 10000 = 12000, the peak
    return tf.reduce_sum(c)

  graph = split_chain.get_concrete_function(tf.TensorSpec([1000], tf.float32)).graph
  assert memory_model.peak_live_bytes(graph) == (12000, 0)


def test_broadcast_gradient_axes_are_not_unknown_sizes():
  # The gradient of a matmul that broadcasts b over a's batch sums b's gradient over the
  # broadcast axes, found by BroadcastGradientArgs: int32 vectors without a static
  # length. They are tiny; an estimate must not refuse the graph for them.
  b = tf.Variable(tf.ones([1, 8, 8]))

  @tf.function
  def gradient(a):
    with tf.GradientTape() as tape:
      loss = tf.reduce_sum(tf.matmul(a, b))
    return tape.gradient(loss, b)

  graph = gradient.get_concrete_function(tf.TensorSpec([4, 3, 8], tf.float32)).graph
  assert "BroadcastGradientArgs" in {operation.type for operation in graph.get_operations()}
  _, unknown = memory_model.peak_live_bytes(graph)
  assert unknown == 0
