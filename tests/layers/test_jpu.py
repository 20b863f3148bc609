"""JPU against a NumPy reference of the FastFCN computation (convs written as tap loops)."""
import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from deeplab_axial.layers import jpu
from tests import helpers


def _conv_same(x, kernel, dilation=1, depthwise=False):
  """'same' stride-1 conv of x [b, h, w, c]; kernel [k, k, c, out] or [k, k, c, 1]."""
  size = kernel.shape[0]
  pad = dilation * (size - 1) // 2
  padded = np.pad(x, [(0, 0), (pad, pad), (pad, pad), (0, 0)])
  height, width = x.shape[1:3]
  out = 0.0
  for dy in range(size):
    for dx in range(size):
      patch = padded[:, dy * dilation:dy * dilation + height, dx * dilation:dx * dilation + width]
      out = out + (patch * kernel[dy, dx, :, 0] if depthwise else patch @ kernel[dy, dx])
  return out


def _batch_norm(x, bn):
  scale = bn.gamma.numpy() / np.sqrt(bn.moving_variance.numpy() + bn.epsilon)
  return (x - bn.moving_mean.numpy()) * scale + bn.beta.numpy()


def _resize_bilinear(x, height, width):
  """Bilinear resize with corners aligned: output 0 ↔ input 0, output end ↔ input end."""
  def weights(out_size, in_size):
    source = np.arange(out_size) * ((in_size - 1) / max(out_size - 1, 1))
    lower = np.floor(source).astype(int)
    upper = np.minimum(lower + 1, in_size - 1)
    return lower, upper, source - lower
  top, bottom, wy = weights(height, x.shape[1])
  left, right, wx = weights(width, x.shape[2])
  rows = x[:, top] * (1 - wy)[None, :, None, None] + x[:, bottom] * wy[None, :, None, None]
  return rows[:, :, left] * (1 - wx)[None, None, :, None] + rows[:, :, right] * wx[None, None,
                                                                                  :, None]


def _jpu_reference(features, layer):
  laterals = [np.maximum(_batch_norm(_conv_same(x, lateral.conv.kernel.numpy()), lateral.bn), 0)
              for x, lateral in zip(features, layer.laterals)]
  height, width = laterals[0].shape[1:3]
  joint = np.concatenate([laterals[0]] + [_resize_bilinear(y, height, width)
                                          for y in laterals[1:]], axis=-1)
  outputs = []
  for rate, branch in zip(layer.dilation_rates, layer.branches):
    depthwise = _batch_norm(
        _conv_same(joint, branch.depthwise.depthwise_kernel.numpy(), rate, depthwise=True),
        branch.depthwise_bn)  # no activation before the pointwise conv
    pointwise = depthwise @ branch.pointwise.conv.kernel.numpy()[0, 0]
    outputs.append(np.maximum(_batch_norm(pointwise, branch.pointwise.bn), 0))
  return np.concatenate(outputs, axis=-1)


def _features(os8_size, channels=(4, 6, 8), batch=2):
  """Features of a backbone whose OS-8 map is os8_size: ceil-halved like 'same' strides."""
  sizes = [os8_size]
  for _ in range(2):
    sizes.append(tuple(-(-s // 2) for s in sizes[-1]))
  return [np.random.randn(batch, *size, c).astype(np.float32)
          for size, c in zip(sizes, channels)]


@pytest.mark.parametrize("os8_size", [(8, 8), (17, 13)])
def test_matches_numpy_reference_and_output_stride(os8_size):
  features = _features(os8_size)
  layer = jpu.JointPyramidUpsampling(filters=5, dilation_rates=(1, 2, 3))
  layer(features)
  helpers.randomize_batch_norms(layer, np.random.default_rng(0))
  y = layer(features, training=False).numpy()
  assert y.shape == (2, *os8_size, 15)
  np.testing.assert_allclose(y, _jpu_reference(features, layer), atol=1e-4)


def test_dict_inputs_equal_list_inputs():
  features = _features((6, 6))
  layer = jpu.JointPyramidUpsampling(filters=4)
  expected = layer(features, training=False).numpy()
  for keys in (("c3", "c4", "c5"), ("res3", "res4", "res5")):
    named = dict(zip(keys, features))
    named["res2"] = np.zeros([2, 12, 12, 3], np.float32)  # extra endpoints are ignored
    np.testing.assert_array_equal(layer(named, training=False).numpy(), expected)


def test_parameter_count_matches_fastfcn():
  layer = jpu.JointPyramidUpsampling()
  layer.build([[None, None, None, 512], [None, None, None, 1024], [None, None, None, 2048]])
  trainable = sum(int(np.prod(w.shape)) for w in layer.trainable_weights)
  # Laterals 3×3×(512+1024+2048)×512; per branch depthwise 3×3×1536 + pointwise 1536×512;
  # BN gamma/beta: 3×512 laterals + 4×(1536 + 512) branches, ×2.
  assert trainable == 19735552


def test_config_round_trip_xla_and_unknown_sizes():
  features = _features((9, 11))
  layer = jpu.JointPyramidUpsampling(filters=4, dilation_rates=[1, 2], name="jpu")
  layer(features)
  clone = jpu.JointPyramidUpsampling.from_config(layer.get_config())
  clone(features)
  clone.set_weights(layer.get_weights())
  assert clone.get_config() == layer.get_config()
  expected = layer(features, training=False).numpy()
  np.testing.assert_allclose(clone(features, training=False).numpy(), expected, atol=1e-6)
  compiled = tf.function(lambda f: layer(f, training=False), jit_compile=True)
  np.testing.assert_allclose(compiled(features).numpy(), expected, atol=1e-4)
  inputs = [tf_keras.Input([None, None, c]) for c in (4, 6, 8)]
  model = tf_keras.Model(inputs, layer(inputs))
  for os8_size in ((5, 7), (12, 3)):
    assert model(_features(os8_size, batch=1)).shape == (1, *os8_size, 8)


def test_mixed_precision():
  tf_keras.mixed_precision.set_global_policy("mixed_float16")
  try:
    features = _features((8, 8))
    layer = jpu.JointPyramidUpsampling(filters=4)
    y = layer(features, training=False)
    assert y.dtype == tf.float16
    np.testing.assert_allclose(y.numpy().astype(np.float32), _jpu_reference(features, layer),
                               atol=0.05, rtol=0.02)
  finally:
    tf_keras.mixed_precision.set_global_policy("float32")


def test_bad_inputs_raise():
  layer = jpu.JointPyramidUpsampling(filters=4)
  features = _features((4, 4))
  with pytest.raises(ValueError, match="c3"):
    layer({"c3": features[0], "c4": features[1]})
  with pytest.raises(ValueError, match="os8"):
    layer(features[:2])
  with pytest.raises(ValueError, match="filters"):
    jpu.JointPyramidUpsampling(filters=0)
  with pytest.raises(ValueError, match="dilation_rates"):
    jpu.JointPyramidUpsampling(dilation_rates=(1, 0))
