"""Plain ViT backbone: NumPy attention, bilinear position embeddings, QD, counts."""
import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from deeplab_axial.layers import vit


def _numpy_bilinear(grid, out_h, out_w):
  """Half-pixel-centre bilinear resize (align_corners=False), edges clamped."""
  in_h, in_w, _ = grid.shape

  def axis_weights(out_size, in_size):
    centres = (np.arange(out_size) + 0.5) * in_size / out_size - 0.5
    low = np.clip(np.floor(centres).astype(int), 0, in_size - 1)
    high = np.clip(low + 1, 0, in_size - 1)
    frac = np.clip(centres - np.floor(centres), 0, 1)
    frac = np.where(centres < 0, 0.0, frac)
    return low, high, frac

  y0, y1, fy = axis_weights(out_h, in_h)
  x0, x1, fx = axis_weights(out_w, in_w)
  top = grid[y0][:, x0] * (1 - fx)[None, :, None] + grid[y0][:, x1] * fx[None, :, None]
  bottom = grid[y1][:, x0] * (1 - fx)[None, :, None] + grid[y1][:, x1] * fx[None, :, None]
  return top * (1 - fy)[:, None, None] + bottom * fy[:, None, None]


def test_position_embedding_interpolation_matches_numpy_bilinear():
  backbone = vit.VisionTransformer(hidden_size=8, num_layers=1, num_heads=2,
                                   position_grid_size=(3, 4))
  backbone(tf.zeros([1, 48, 64, 3]))
  table = backbone.position_embedding.numpy()
  for out_h, out_w in ((5, 7), (3, 4), (2, 9)):
    np.testing.assert_allclose(backbone.interpolated_position_embedding(out_h, out_w).numpy(),
                               _numpy_bilinear(table, out_h, out_w), atol=1e-6)


def _numpy_attention(layer, query, key_value, heads):
  dense = lambda d, x: x @ d.kernel.numpy() + d.bias.numpy()
  q, k, v = dense(layer._query, query), dense(layer._key, key_value), dense(layer._value,
                                                                           key_value)
  split = lambda t: t.reshape(t.shape[0], t.shape[1], heads, -1).transpose(0, 2, 1, 3)
  q, k, v = split(q), split(k), split(v)
  logits = q @ k.transpose(0, 1, 3, 2) / np.sqrt(q.shape[-1])
  weights = np.exp(logits - logits.max(-1, keepdims=True))
  weights /= weights.sum(-1, keepdims=True)
  attended = (weights @ v).transpose(0, 2, 1, 3).reshape(query.shape[0], query.shape[1], -1)
  return dense(layer._output, attended), logits.mean(1)


def test_token_attention_matches_numpy():
  query = np.random.randn(2, 3, 6).astype(np.float32)
  key_value = np.random.randn(2, 5, 4).astype(np.float32)
  layer = vit.TokenAttention(8, 2)
  outputs, logits = layer([query, key_value], return_logits=True)
  expected, expected_logits = _numpy_attention(layer, query, key_value, 2)
  np.testing.assert_allclose(outputs.numpy(), expected, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(logits.numpy(), expected_logits, rtol=1e-4, atol=1e-5)


def test_query_downsample_uses_even_tokens_as_queries_and_full_keys():
  grid = np.random.randn(2, 5, 7, 8).astype(np.float32)
  layer = vit.QueryDownsample(8, 2)
  outputs = layer(grid).numpy()
  assert outputs.shape == (2, 3, 4, 8)
  queries = grid[:, ::2, ::2].reshape(2, 12, 8)
  expected = layer.block(grid.reshape(2, 35, 8), query_tokens=queries).numpy()
  np.testing.assert_allclose(outputs.reshape(2, 12, 8), expected, atol=1e-5)
  averaged = vit.QueryDownsample(8, 2, pooling="average")(grid)
  assert averaged.shape == (2, 3, 4, 8)
  with pytest.raises(ValueError, match="pooling"):
    vit.QueryDownsample(8, 2, pooling="max")


def test_vit_tiny_parameter_count_matches_timm_minus_head():
  # timm vit_tiny_patch16_224 has 5,717,416 parameters; ours has no class token (192), no
  # final LayerNorm (384) and no 1000-class head (193,000); same 14×14 position grid.
  backbone = vit.VisionTransformer.from_preset("vit_tiny")
  backbone(tf.zeros([1, 224, 224, 3]))
  assert backbone.count_params() == 5_717_416 - 192 - 384 - 193_000 - 192
  with pytest.raises(ValueError, match="preset"):
    vit.VisionTransformer.from_preset("vit_huge")


def test_shapes_padding_shrink_unknown_sizes_and_xla():
  backbone = vit.VisionTransformer(hidden_size=16, num_layers=4, num_heads=2,
                                   output_layers=(2, 3, 4), shrink_index=3,
                                   position_grid_size=(4, 4))
  outputs = backbone(tf.random.normal([2, 70, 100, 3]))  # 5×7 patches after padding
  assert outputs["layer2"].shape == (2, 5, 7, 16)
  assert outputs["layer3"].shape == (2, 3, 4, 16)
  assert outputs["layer4"].shape == (2, 3, 4, 16)
  traced = tf.function(lambda x: backbone(x)["layer4"],
                       input_signature=[tf.TensorSpec([None, None, None, 3])])
  assert traced(tf.zeros([1, 64, 32, 3])).shape == (1, 2, 1, 16)
  images = tf.random.normal([1, 48, 48, 3])
  compiled = tf.function(lambda x: backbone(x)["layer4"], jit_compile=True)
  np.testing.assert_allclose(compiled(images).numpy(), backbone(images)["layer4"].numpy(),
                             atol=1e-4)


def test_serialization_round_trip_and_bad_arguments():
  backbone = vit.VisionTransformer(hidden_size=8, num_layers=2, num_heads=2,
                                   output_layers=(1, 2), shrink_index=2,
                                   position_grid_size=(2, 2))
  images = tf.random.normal([1, 32, 48, 3])
  expected = backbone(images)
  clone = tf_keras.layers.deserialize(tf_keras.layers.serialize(backbone))
  clone(images)
  clone.set_weights(backbone.get_weights())
  for key, value in clone(images).items():
    np.testing.assert_allclose(value.numpy(), expected[key].numpy(), atol=1e-6)
  with pytest.raises(ValueError, match="output_layers"):
    vit.VisionTransformer(num_layers=2, output_layers=(3,))
  with pytest.raises(ValueError, match="divisible"):
    vit.TokenAttention(10, 3)


def test_mixed_float16_keeps_attention_finite():
  tf_keras.mixed_precision.set_global_policy("mixed_float16")
  try:
    backbone = vit.VisionTransformer(hidden_size=8, num_layers=1, num_heads=2,
                                     position_grid_size=(2, 2))
    outputs = backbone(tf.random.normal([1, 32, 32, 3]) * 100)
  finally:
    tf_keras.mixed_precision.set_global_policy("float32")
  assert outputs["layer1"].dtype == tf.float16
  assert np.all(np.isfinite(outputs["layer1"].numpy()))
