"""DANet layers against NumPy references written from the paper's / official code's equations."""
import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from deeplab_axial.layers import danet


def _softmax(x, axis=-1):
  x = x - x.max(axis=axis, keepdims=True)
  e = np.exp(x)
  return e / e.sum(axis=axis, keepdims=True)


def _pam_reference(x, layer):
  """y_i = gamma * sum_j softmax_j(q_i . k_j) v_j + x_i, weights copied from `layer`."""
  batch, height, width, channels = x.shape
  flat = x.reshape(batch, height * width, channels).astype(np.float64)
  project = lambda dense: flat @ dense.kernel.numpy() + dense.bias.numpy()
  q, k, v = project(layer.query), project(layer.key), project(layer.value)
  attention = _softmax(q @ k.transpose(0, 2, 1))
  out = float(layer.gamma.numpy()) * (attention @ v)
  return out.reshape(x.shape) + x


def _cam_reference(x, gamma, sign):
  """y = gamma * X softmax(sign * XᵀX)ᵀ + X, per image (sign -1: the official code)."""
  batch, height, width, channels = x.shape
  flat = x.reshape(batch, height * width, channels).astype(np.float64)
  energy = flat.transpose(0, 2, 1) @ flat
  attention = _softmax(sign * energy)
  return (gamma * flat @ attention.transpose(0, 2, 1)).reshape(x.shape) + x


def _random_input(shape, scale=0.3):
  return (scale * np.random.randn(*shape)).astype(np.float32)


def _clone(layer, x):
  clone = layer.__class__.from_config(layer.get_config())
  clone(x)
  clone.set_weights(layer.get_weights())
  return clone


def test_position_attention_matches_numpy_reference():
  x = _random_input([2, 5, 7, 16])
  layer = danet.PositionAttention()
  layer(x)
  layer.gamma.assign(0.7)
  assert layer.query.kernel.shape == (16, 2)  # C / 8
  np.testing.assert_allclose(layer(x).numpy(), _pam_reference(x, layer), atol=1e-5)


@pytest.mark.parametrize("mode,sign", [("official", -1.0), ("paper", 1.0)])
def test_channel_attention_matches_numpy_reference(mode, sign):
  x = _random_input([2, 4, 6, 8])
  layer = danet.ChannelAttention(mode=mode)
  layer(x)
  layer.gamma.assign(-1.3)
  np.testing.assert_allclose(layer(x).numpy(), _cam_reference(x, -1.3, sign), atol=1e-5)


@pytest.mark.parametrize("layer_class", [danet.PositionAttention, danet.ChannelAttention])
def test_zero_gamma_is_identity_and_gamma_gets_gradient(layer_class):
  x = tf.constant(_random_input([2, 6, 5, 16]))
  layer = layer_class()
  with tf.GradientTape() as tape:
    y = layer(x)
    loss = tf.reduce_sum(y * tf.sin(x))
  np.testing.assert_array_equal(y.numpy(), x.numpy())
  gradients = tape.gradient(loss, layer.trainable_weights)
  for gradient in gradients:
    if gradient.shape.rank == 0:  # gamma
      assert abs(float(gradient)) > 0
    else:
      np.testing.assert_array_equal(gradient.numpy(), 0.0)


def test_parameter_counts_match_danet():
  position = danet.PositionAttention()
  position.build([None, None, None, 512])
  channel = danet.ChannelAttention()
  channel.build([None, None, None, 512])
  # Query and key 512→64 with bias, value 512→512 with bias, gamma.
  assert position.count_params() == 2 * (512 * 64 + 64) + 512 * 512 + 512 + 1 == 328321
  assert channel.count_params() == 1


def test_position_attention_is_permutation_equivariant():
  x = _random_input([1, 4, 5, 8])
  layer = danet.PositionAttention(reduction=2)
  layer(x)
  layer.gamma.assign(1.0)
  order = np.random.permutation(20)
  permuted = x.reshape(1, 20, 8)[:, order].reshape(x.shape)
  expected = layer(x).numpy().reshape(1, 20, 8)[:, order].reshape(x.shape)
  np.testing.assert_allclose(layer(permuted).numpy(), expected, atol=1e-5)


def test_dual_attention_head_shapes_and_fusion_before_classifier():
  x = _random_input([2, 6, 6, 32])
  head = danet.DualAttentionHead(num_classes=3, dropout=0.5)
  head(x)
  # Same weights in the three classifiers: by linearity, fused = pam + cam - bias iff the
  # fusion is the feature sum feeding the fused classifier.
  kernel = np.random.randn(1, 1, 8, 3).astype(np.float32)
  bias = np.random.randn(3).astype(np.float32)
  for classifier in (head.fused_classifier, head.position_classifier,
                     head.channel_classifier):
    classifier.set_weights([kernel, bias])
  for attention in (head.position_attention, head.channel_attention):
    attention.gamma.assign(0.5)
  outputs = head(x, training=False)
  assert set(outputs) == {"logits", "position_logits", "channel_logits"}
  for value in outputs.values():
    assert value.shape == (2, 6, 6, 3)
  np.testing.assert_allclose(
      outputs["logits"].numpy(),
      outputs["position_logits"].numpy() + outputs["channel_logits"].numpy() - bias,
      atol=1e-4)
  # Dropout only in training.
  np.testing.assert_array_equal(head(x, training=False)["logits"].numpy(),
                                outputs["logits"].numpy())
  assert not np.allclose(head(x, training=True)["logits"].numpy(), outputs["logits"].numpy())


@pytest.mark.parametrize("make_layer", [
    lambda: danet.PositionAttention(reduction=4, name="pam"),
    lambda: danet.ChannelAttention(mode="paper"),
    lambda: danet.DualAttentionHead(4, inter_channels=8, dropout=0.2,
                                    channel_attention_mode="paper"),
])
def test_config_round_trip_xla_and_unknown_sizes(make_layer):
  x = _random_input([2, 5, 6, 16])
  layer = make_layer()
  layer(x)
  for weight in layer.weights:
    if weight.shape.rank == 0:  # the attention gammas
      weight.assign(0.5)
  clone = _clone(layer, x)
  assert clone.get_config() == layer.get_config()
  expected = tf.nest.flatten(layer(x))
  tf.nest.map_structure(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6),
                        tf.nest.flatten(clone(x)), expected)
  compiled = tf.function(lambda t: layer(t), jit_compile=True)  # pylint: disable=unnecessary-lambda
  tf.nest.map_structure(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-4),
                        tf.nest.flatten(compiled(x)), expected)
  inputs = tf_keras.Input([None, None, 16])
  model = tf_keras.Model(inputs, layer(inputs))
  for shape in ([1, 3, 9, 16], [2, 7, 4, 16]):
    for output in tf.nest.flatten(model(_random_input(shape))):
      assert output.shape[:3] == shape[:3]


@pytest.mark.parametrize("layer_class,scale", [(danet.PositionAttention, 3.0),
                                               (danet.ChannelAttention, 40.0)])
@pytest.mark.usefixtures("mixed_precision")
def test_mixed_precision_close_to_float32(layer_class, scale):
  # CAM at scale 40: the energies (~1e5) overflow float16, so they must be float32.
  x = _random_input([1, 8, 8, 16], scale=scale)
  layer = layer_class()
  y = layer(x)
  assert y.dtype == tf.float16
  for weight in layer.weights:
    if weight.shape.rank == 0:  # the attention gammas
      weight.assign(0.5)
  y = layer(x).numpy().astype(np.float32)
  assert np.all(np.isfinite(y))
  if layer_class is danet.PositionAttention:
    expected = _pam_reference(x, layer)
  else:
    expected = _cam_reference(x, 0.5, -1.0)
  np.testing.assert_allclose(y, expected, atol=0.05, rtol=0.02)


@pytest.mark.usefixtures("mixed_precision")
def test_head_mixed_precision():
  outputs = danet.DualAttentionHead(3)(_random_input([1, 6, 6, 16]))
  for value in outputs.values():
    assert value.dtype == tf.float16
    assert np.all(np.isfinite(value.numpy()))


@pytest.mark.parametrize("make_layer,message", [
    (lambda: danet.PositionAttention(reduction=0), "reduction"),
    (lambda: danet.PositionAttention(key_channels=-2), "key_channels"),
    (lambda: danet.ChannelAttention(mode="max"), "mode"),
    (lambda: danet.DualAttentionHead(0), "num_classes"),
    (lambda: danet.DualAttentionHead(3, dropout=1.0), "dropout"),
])
def test_bad_arguments_raise(make_layer, message):
  with pytest.raises(ValueError, match=message):
    make_layer()


def test_unknown_channels_raise():
  with pytest.raises(ValueError, match="channel"):
    danet.PositionAttention().build([None, 4, 4, None])


def test_multiply_adds():
  # 512 channels at 65×65: projections n·512·(2·64 + 512), attention n²·(64 + 512).
  n = 65 * 65
  assert danet.PositionAttention().compute_multiply_adds([1, 65, 65, 512]) == (
      n * 512 * 640 + n * n * 576)
  assert danet.ChannelAttention().compute_multiply_adds([65, 65, 512]) == 2 * n * 512 * 512
