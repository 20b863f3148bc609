"""graph_code.graph_call: autograph leaves the call alone; Keras still sees its signature."""
import pytest
import tensorflow as tf
import tf_keras

from deeplab_axial.layers import graph_code


class _Doubling(tf_keras.layers.Layer):
  """Doubles in training; branches on a tensor with a Python `if` (autograph-only code)."""

  def call(self, inputs, training=None):
    if tf.reduce_sum(inputs) > 0:  # needs autograph inside a tf.function
      return inputs * (2.0 if training else 1.0)
    return inputs


class _GraphDoubling(tf_keras.layers.Layer):

  @graph_code.graph_call
  def call(self, inputs, training=None):
    return inputs * (2.0 if training else 1.0)


class _GraphPythonIf(_Doubling):

  @graph_code.graph_call
  def call(self, inputs, training=None):
    return super().call(inputs, training=training)


def test_autograph_converts_a_plain_call_but_not_a_graph_call():
  inputs = tf.ones([1, 2, 3])
  converted = tf.function(lambda x: _Doubling()(x, training=True))
  assert float(tf.reduce_sum(converted(inputs))) == 12.0
  unconverted = tf.function(lambda x: _GraphPythonIf()(x, training=True))
  with pytest.raises(TypeError, match="(?i)bool|autograph"):
    unconverted(inputs)


def test_keras_sees_the_training_argument_and_passes_no_mask():
  layer = _GraphDoubling()
  assert layer._expects_training_arg and not layer._expects_mask_arg  # pylint: disable=protected-access
  # A mask-producing layer before it: Keras would pass `mask=` to a call taking **kwargs.
  model = tf_keras.Sequential([tf_keras.layers.Masking(), layer])
  inputs = tf.ones([1, 2, 3])
  assert float(tf.reduce_sum(model(inputs, training=True))) == 12.0
  assert float(tf.reduce_sum(model(inputs, training=False))) == 6.0
