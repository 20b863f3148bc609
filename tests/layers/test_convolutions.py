"""Tests for ConvBNReLU, SeparableConvBNReLU, ASPP and InceptionStem against NumPy."""
import numpy as np
import pytest
import tensorflow as tf

from deeplab_axial.layers import convolutions
from tests import helpers


def _conv_numpy(x, kernel, stride=1, dilation=1, padding=None, depthwise=False):
  """NHWC convolution from the definition; `padding` defaults to symmetric (k−1)·d/2."""
  kh, kw = kernel.shape[:2]
  pad_h, pad_w = (padding if padding is not None else
                  (dilation * (kh - 1) // 2, dilation * (kw - 1) // 2))
  x = np.pad(x, [(0, 0), (pad_h, dilation * (kh - 1) - pad_h),
                 (pad_w, dilation * (kw - 1) - pad_w), (0, 0)])
  out_h = (x.shape[1] - dilation * (kh - 1) - 1) // stride + 1
  out_w = (x.shape[2] - dilation * (kw - 1) - 1) // stride + 1
  out_channels = kernel.shape[2] * kernel.shape[3] if depthwise else kernel.shape[3]
  out = np.zeros((x.shape[0], out_h, out_w, out_channels))
  for i in range(kh):
    for j in range(kw):
      window = x[:, i * dilation:i * dilation + stride * (out_h - 1) + 1:stride,
                 j * dilation:j * dilation + stride * (out_w - 1) + 1:stride, :]
      if depthwise:
        out += window * kernel[i, j, :, 0]
      else:
        out += window @ kernel[i, j]
  return out


def _bn_numpy(x, bn):
  gamma, beta, mean, variance = [w.numpy() for w in bn.weights]
  return gamma * (x - mean) / np.sqrt(variance + bn.epsilon) + beta


def _conv_bn_relu_numpy(x, layer, stride=1, dilation=1):
  y = _conv_numpy(x, layer.conv.kernel.numpy(), stride, dilation)
  y = _bn_numpy(y, layer.bn)
  return np.maximum(y, 0) if layer.use_relu else y


def _separable_numpy(x, layer, dilation=1):
  y = _conv_numpy(x, layer.depthwise.depthwise_kernel.numpy(), 1, dilation, depthwise=True)
  y = np.maximum(_bn_numpy(y, layer.depthwise_bn), 0)
  return _conv_bn_relu_numpy(y, layer.pointwise)


@pytest.mark.parametrize("size, kernel_size, strides, dilation", [
    ((8, 10), 3, 2, 1),   # even sizes: PyTorch-style symmetric padding, not Keras 'same'
    ((9, 7), 7, 2, 1),
    ((9, 7), 3, 1, 2),
    ((6, 5), 1, 2, 1),
])
def test_conv_bn_relu_matches_numpy(size, kernel_size, strides, dilation):
  rng = np.random.default_rng(0)
  layer = convolutions.ConvBNReLU(5, kernel_size, strides=strides, dilation_rate=dilation)
  x = rng.normal(size=(2, *size, 3)).astype(np.float32)
  layer(x)
  helpers.randomize_batch_norms(layer, rng)
  got = layer(x, training=False).numpy()
  want = _conv_bn_relu_numpy(x, layer, strides, dilation)
  assert got.shape == (2, -(-size[0] // strides), -(-size[1] // strides), 5)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
  assert layer.compute_output_shape((2, *size, 3)) == got.shape


def test_conv_bn_relu_options():
  layer = convolutions.ConvBNReLU(4, 3, use_relu=False, use_batch_norm=False)
  x = np.random.default_rng(1).normal(size=(1, 5, 5, 2)).astype(np.float32)
  got = layer(x).numpy()
  want = _conv_numpy(x, layer.conv.kernel.numpy()) + layer.conv.bias.numpy()
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  assert (got < 0).any()  # no ReLU


def test_separable_conv_matches_numpy():
  rng = np.random.default_rng(2)
  layer = convolutions.SeparableConvBNReLU(6, 5, dilation_rate=2)
  x = rng.normal(size=(2, 9, 11, 4)).astype(np.float32)
  layer(x)
  helpers.randomize_batch_norms(layer, rng)
  np.testing.assert_allclose(layer(x, training=False).numpy(), _separable_numpy(x, layer, 2),
                             rtol=1e-4, atol=1e-4)
  # depthwise 5·5·4 + pointwise 4·6, plus BN γ/β for 4 and 6 channels.
  assert sum(int(np.prod(w.shape)) for w in layer.trainable_weights) == 100 + 24 + 8 + 12


@pytest.mark.parametrize("use_separable_conv", [False, True])
def test_aspp_matches_numpy(use_separable_conv):
  rng = np.random.default_rng(3)
  layer = convolutions.ASPP(3, atrous_rates=(1, 2, 3), use_separable_conv=use_separable_conv)
  x = rng.normal(size=(2, 7, 9, 4)).astype(np.float32)
  layer(x)
  helpers.randomize_batch_norms(layer, rng)
  branches = [_conv_bn_relu_numpy(x, layer.conv_1x1)]
  for rate, branch in zip((1, 2, 3), layer.atrous_convs):
    branches.append(_separable_numpy(x, branch, rate) if use_separable_conv
                    else _conv_bn_relu_numpy(x, branch, 1, rate))
  pooled = _conv_bn_relu_numpy(x.mean(axis=(1, 2), keepdims=True), layer.pool_conv)
  branches.append(np.broadcast_to(pooled, (2, 7, 9, 3)))
  want = _conv_bn_relu_numpy(np.concatenate(branches, axis=-1), layer.projection)
  np.testing.assert_allclose(layer(x, training=False).numpy(), want, rtol=1e-4, atol=1e-4)


def test_aspp_parameter_count():
  layer = convolutions.ASPP(256, atrous_rates=(6, 12, 18))
  layer.build((None, None, None, 2048))
  conv = 2048 * 256 * (1 + 3 * 9 + 1) + 5 * 256 * 256  # 1×1, 3 atrous, pooling, projection
  batch_norms = 6 * 2 * 256  # γ and β after each of the 6 convs
  assert sum(int(np.prod(w.shape)) for w in layer.trainable_weights) == conv + batch_norms


def test_inception_stem_shapes_and_parameters():
  stem = convolutions.InceptionStem()
  out = stem(tf.zeros([1, 65, 96, 3]))
  assert out.shape == (1, 33, 48, 128)
  assert stem.compute_output_shape((1, 65, 96, 3)) == (1, 33, 48, 128)
  conv = 9 * (3 * 64 + 64 * 64 + 64 * 128)
  assert sum(int(np.prod(w.shape)) for w in stem.trainable_weights) == conv + 2 * 256


@pytest.mark.parametrize("make_layer", [
    lambda: convolutions.ConvBNReLU(4, 3, strides=2, use_relu=False, gamma_initializer="zeros"),
    lambda: convolutions.SeparableConvBNReLU(4, 3, dilation_rate=2),
    lambda: convolutions.ASPP(4, (1, 2, 3), dropout_rate=0.2, use_separable_conv=True),
    lambda: convolutions.InceptionStem((4, 4, 8)),
])
def test_config_round_trip(make_layer):
  layer = make_layer()
  x = np.random.default_rng(4).normal(size=(1, 9, 8, 3)).astype(np.float32)
  want = layer(x, training=False).numpy()
  config = layer.get_config()
  clone = type(layer).from_config(config)
  clone(x)
  clone.set_weights(layer.get_weights())
  assert clone.get_config() == config
  np.testing.assert_allclose(clone(x, training=False).numpy(), want, rtol=1e-6)


def test_xla_unknown_sizes_and_mixed_precision(mixed_precision):  # pylint: disable=unused-argument
  stem = convolutions.InceptionStem((4, 4, 3))  # strided: explicit padding
  layer = convolutions.ASPP(4, (1, 2, 3))
  forward = tf.function(lambda x: layer(stem(x), training=False), jit_compile=True,
                        input_signature=[tf.TensorSpec([None, None, None, 3])])
  for size in ((9, 13), (8, 6)):
    out = forward(tf.ones([1, *size, 3]))
    assert out.shape == (1, -(-size[0] // 2), -(-size[1] // 2), 4)
    assert out.dtype == tf.float16
  assert all(w.dtype == tf.float32 for w in layer.weights + stem.weights)


@pytest.mark.parametrize("make_layer, message", [
    (lambda: convolutions.ConvBNReLU(0, 3), "filters"),
    (lambda: convolutions.ConvBNReLU(4, 3, strides=2, dilation_rate=2), "dilation_rate"),
    (lambda: convolutions.ASPP(4, (6, 12)), "atrous_rates"),
    (lambda: convolutions.ASPP(4, dropout_rate=1.5), "dropout_rate"),
    (lambda: convolutions.InceptionStem((64, 64)), "filters"),
])
def test_bad_arguments_raise(make_layer, message):
  with pytest.raises(ValueError, match=message):
    make_layer()
