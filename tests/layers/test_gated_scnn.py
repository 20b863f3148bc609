"""Gated-SCNN layers against NumPy references of the paper/official-code equations."""
import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from deeplab_axial.layers import gated_scnn

_BN_EPS = 1e-5


def _numpy_gcl(layer, s, r):
  """α = σ(BN(W2·ReLU(W1·BN([s‖r]) + b1) + b2)); out = (s·α + s)·W3 (BN at init stats)."""
  bn = lambda x: x / np.sqrt(1.0 + _BN_EPS)  # moving mean 0, variance 1, γ 1, β 0.
  joint = bn(np.concatenate([s, r], axis=-1))
  hidden = np.maximum(joint @ layer._gate_hidden.kernel.numpy()[0, 0]
                      + layer._gate_hidden.bias.numpy(), 0.0)
  logits = bn(hidden @ layer._gate_logit.kernel.numpy()[0, 0] + layer._gate_logit.bias.numpy())
  alpha = 1.0 / (1.0 + np.exp(-logits))
  return alpha, (s * alpha + s) @ layer._output_conv.kernel.numpy()[0, 0]


def test_gated_conv_matches_numpy_and_gate_in_unit_range():
  s = np.random.randn(2, 5, 6, 4).astype(np.float32) * 3
  r = np.random.randn(2, 5, 6, 1).astype(np.float32) * 3
  layer = gated_scnn.GatedConv2D(7)
  outputs = layer([s, r], training=False).numpy()
  alpha = layer.gate([s, r], training=False).numpy()
  expected_alpha, expected = _numpy_gcl(layer, s, r)
  assert alpha.shape == (2, 5, 6, 1) and outputs.shape == (2, 5, 6, 7)
  assert np.all((alpha >= 0.0) & (alpha <= 1.0))
  np.testing.assert_allclose(alpha, expected_alpha, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(outputs, expected, rtol=1e-4, atol=1e-5)


def test_gated_conv_is_identity_when_gate_is_closed():
  s = np.random.randn(1, 4, 4, 3).astype(np.float32)
  r = np.random.randn(1, 4, 4, 1).astype(np.float32)
  layer = gated_scnn.GatedConv2D(3)
  layer([s, r])
  layer._gate_logit.kernel.assign(tf.zeros_like(layer._gate_logit.kernel))
  layer._gate_logit.bias.assign([-1e4])  # α = σ(−1e4/√(1+ε)) = 0 exactly in float32.
  layer._output_conv.kernel.assign(np.eye(3, dtype=np.float32)[None, None])
  np.testing.assert_array_equal(layer.gate([s, r], training=False).numpy(), 0.0)
  np.testing.assert_array_equal(layer([s, r], training=False).numpy(), s)


def test_gated_conv_trainable_weight_count_matches_official_gcl():
  # other_seeds.md §4.6: GCL(32) = BN 66 + 1,122 + 34 + BN 2 + 1,024 = 2,248 weights.
  layer = gated_scnn.GatedConv2D(32)
  layer([tf.zeros([1, 4, 4, 32]), tf.zeros([1, 4, 4, 1])])
  assert sum(int(np.prod(w.shape)) for w in layer.trainable_weights) == 2248


def test_gated_conv_resizes_smaller_regular_features():
  s = np.random.randn(1, 8, 8, 2).astype(np.float32)
  r = np.random.randn(1, 4, 4, 1).astype(np.float32)
  layer = gated_scnn.GatedConv2D(2)
  upsampled = tf.image.resize(r, [8, 8]).numpy()
  np.testing.assert_allclose(layer([s, r]).numpy(), layer([s, upsampled]).numpy(), atol=1e-6)


def test_gated_conv_rejects_bad_filters():
  with pytest.raises(ValueError, match="filters"):
    gated_scnn.GatedConv2D(0)


def _endpoints(height, width, batch=2):
  return {"image": tf.random.uniform([batch, height, width, 3], 0, 255),
          "res2": tf.random.normal([batch, height // 4, width // 4, 6]),
          "res3": tf.random.normal([batch, height // 8, width // 8, 8]),
          "res4": tf.random.normal([batch, height // 16, width // 16, 10]),
          "res5": tf.random.normal([batch, height // 16, width // 16, 12])}


def _tiny_stream():
  return gated_scnn.ShapeStream(filters=(8, 4, 2), stem_filters=8)


def test_shape_stream_shapes_ranges_and_unknown_sizes():
  stream = _tiny_stream()
  inputs = _endpoints(32, 48)
  outputs = stream(inputs)
  assert outputs["boundary_logits"].shape == (2, 32, 48, 1)
  assert outputs["fused_boundary"].shape == (2, 32, 48, 1)
  assert outputs["features"].shape == (2, 8, 12, 2)
  fused = outputs["fused_boundary"].numpy()
  assert np.all((fused > 0) & (fused < 1))
  spec = {k: tf.TensorSpec([None, None, None, v.shape[-1]]) for k, v in inputs.items()}
  traced = tf.function(lambda x: stream(x)["boundary_logits"], input_signature=[spec])
  other = _endpoints(64, 32, batch=1)
  assert traced(other).shape == (1, 64, 32, 1)


def test_shape_stream_fusion_sees_image_gradient():
  stream = _tiny_stream()
  inputs = _endpoints(32, 32, batch=1)
  flat = dict(inputs, image=tf.fill([1, 32, 32, 3], 100.0))
  edged = dict(inputs, image=tf.concat([tf.zeros([1, 32, 16, 3]),
                                        tf.fill([1, 32, 16, 3], 255.0)], axis=2))
  stream(flat)
  stream._fusion_conv.kernel.assign([[[[0.0], [5.0]]]])  # fused = σ(5·gradient)
  np.testing.assert_allclose(stream(flat)["fused_boundary"].numpy(), 0.5, atol=1e-6)
  edge_column = stream(edged)["fused_boundary"].numpy()[0, 10, 16, 0]
  assert edge_column > 0.9


def test_shape_stream_serialization_and_xla():
  stream = _tiny_stream()
  inputs = _endpoints(32, 32)
  expected = stream(inputs, training=False)["boundary_logits"].numpy()
  clone = gated_scnn.ShapeStream.from_config(stream.get_config())
  clone(inputs)
  clone.set_weights(stream.get_weights())
  np.testing.assert_allclose(clone(inputs, training=False)["boundary_logits"].numpy(),
                             expected, atol=1e-5)
  compiled = tf.function(lambda x: stream(x, training=False)["boundary_logits"],
                         jit_compile=True)
  np.testing.assert_allclose(compiled(inputs).numpy(), expected, atol=1e-4)


def test_fusion_and_decoder_shapes_and_config():
  fusion = gated_scnn.GatedScnnFusion(4, atrous_rates=(1, 2))
  features = tf.random.normal([2, 4, 6, 5])
  outputs = fusion([features, tf.random.uniform([2, 16, 24, 1])])
  assert outputs.shape == (2, 4, 6, 20)
  assert gated_scnn.GatedScnnFusion.from_config(fusion.get_config()).atrous_rates == (1, 2)
  decoder = gated_scnn.GatedScnnDecoder(3, filters=4, low_level_filters=2)
  logits = decoder([outputs, tf.random.normal([2, 8, 12, 6]), tf.zeros([2, 32, 48, 3])])
  assert logits.shape == (2, 32, 48, 3) and logits.dtype == tf.float32
  with pytest.raises(ValueError, match="atrous_rates"):
    gated_scnn.GatedScnnFusion(4, atrous_rates=(0,))


def test_shape_stream_mixed_float16():
  tf_keras.mixed_precision.set_global_policy("mixed_float16")
  try:
    stream = _tiny_stream()
    outputs = stream(_endpoints(32, 32))
  finally:
    tf_keras.mixed_precision.set_global_policy("float32")
  assert outputs["boundary_logits"].dtype == tf.float32
  assert outputs["features"].dtype == tf.float16
  assert np.all(np.isfinite(outputs["fused_boundary"].numpy()))
