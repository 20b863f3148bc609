"""Tests of AxialAttention2D and AxialBlock against the official PyTorch block."""
import os
import tempfile

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from deeplab_axial.layers.axial_attention import PositionSensitiveAxialAttention
from deeplab_axial.layers.axial_blocks import AxialAttention2D, AxialBlock
from tests.fixtures import make_official_fixtures as fixture_maker
from tests.reference import official_fixtures


@pytest.mark.parametrize("in_planes,planes,strides,training", fixture_maker.BLOCK_CASES)
def test_block_matches_official_pytorch_block(in_planes, planes, strides, training):
  shape = fixture_maker.BLOCK_SHAPE
  size = shape["size"]
  state, x, outputs = official_fixtures.case(
      official_fixtures.load("block.npz"),
      fixture_maker.block_case_name(in_planes, planes, strides, training))
  block = AxialBlock(planes, num_heads=shape["heads"], strides=strides,
                     expansion=shape["expansion"], max_global_length=size)
  block.build((2, size, size, in_planes))
  official_fixtures.assign_conv(block.conv_down, state["conv_down.weight"])
  official_fixtures.assign_batch_norm(block.bn1, state, "bn1")
  official_fixtures.assign_attention(block.attention.height_attention, state, "hight_block")
  official_fixtures.assign_attention(block.attention.width_attention, state, "width_block")
  official_fixtures.assign_conv(block.conv_up, state["conv_up.weight"])
  official_fixtures.assign_batch_norm(block.bn2, state, "bn2")
  if "downsample.0.weight" in state:
    official_fixtures.assign_conv(block.downsample_conv, state["downsample.0.weight"])
    official_fixtures.assign_batch_norm(block.downsample_bn, state, "downsample.1")
  actual = block(x.transpose(0, 2, 3, 1), training=training).numpy()
  np.testing.assert_allclose(actual, outputs["output"], rtol=1e-4, atol=1e-4)


def test_block_parameter_count_matches_official():
  block = AxialBlock(32, num_heads=8, strides=2, max_global_length=14)
  block.build((1, 14, 14, 32))
  theirs = official_fixtures.load("block.npz")[
      "parameter_count_in32_planes32_stride2_groups8_length14"]
  assert sum(int(np.prod(v.shape)) for v in block.trainable_variables) == theirs


@pytest.mark.parametrize("span", [None, 3])
def test_per_axis_striding_is_height_then_width_layer(span):
  """The paper's placement: each axis pooled right after its own layer."""
  x = tf.random.normal([2, 7, 6, 8])
  layer = AxialAttention2D(8, num_heads=2, span=span, strides=2, stride_placement="per_axis",
                           max_global_length=7)
  out = layer(x, training=True)
  height = PositionSensitiveAxialAttention(8, "height", num_heads=2, span=span, strides=2,
                                           max_global_length=7)
  width = PositionSensitiveAxialAttention(8, "width", num_heads=2, span=span, strides=2,
                                          max_global_length=7)
  height.build(x.shape)
  width.build([2, 4, 6, 8])
  height.set_weights(layer.height_attention.get_weights())
  width.set_weights(layer.width_attention.get_weights())
  expected = width(height(x, training=True), training=True)
  assert out.shape == (2, 4, 3, 8)
  np.testing.assert_allclose(out.numpy(), expected.numpy(), rtol=1e-5, atol=1e-5)


def test_after_width_striding_pools_both_axes_with_ceil():
  x = tf.random.normal([1, 5, 7, 8])
  layer = AxialAttention2D(8, num_heads=2, span=3, strides=2)
  out = layer(x).numpy()
  unstrided = AxialAttention2D(8, num_heads=2, span=3)
  unstrided.build(x.shape)
  unstrided.set_weights(layer.get_weights())
  full = unstrided(x).numpy()
  assert out.shape == (1, 3, 4, 8)
  np.testing.assert_allclose(out[0, 0, 0], full[0, :2, :2].mean((0, 1)), rtol=1e-5,
                             atol=1e-6)
  np.testing.assert_allclose(out[0, 2, 3], full[0, 4, 6], rtol=1e-5, atol=1e-6)


@pytest.mark.slow  # SavedModel/.keras export: ~10-20 s on the shared machine
def test_sequential_of_blocks_any_size_and_round_trip():
  model = tf_keras.Sequential([
      tf_keras.Input([None, None, 16]),
      AxialBlock(8, num_heads=2, span=5),
      AxialBlock(8, num_heads=2, span=5, strides=2),
      AxialBlock(8, num_heads=2),
  ])
  for size in ((9, 12), (20, 7)):
    out = model(tf.random.normal([2, *size, 16]), training=True)
    assert out.shape == (2, -(-size[0] // 2), -(-size[1] // 2), 16)
  x = np.random.default_rng(3).normal(size=(1, 10, 11, 16)).astype(np.float32)
  expected = model(x).numpy()
  with tempfile.TemporaryDirectory() as directory:
    path = os.path.join(directory, "blocks.keras")
    model.save(path)
    np.testing.assert_allclose(tf_keras.models.load_model(path)(x).numpy(), expected,
                               rtol=1e-5, atol=1e-5)


def test_zero_init_residual_starts_as_identity_plus_relu():
  x = tf.random.normal([2, 6, 6, 16])
  block = AxialBlock(8, num_heads=2, span=3)
  np.testing.assert_allclose(block(x, training=True).numpy(), tf.nn.relu(x).numpy())


def test_block_config_round_trip_and_errors():
  block = AxialBlock(16, num_heads=4, span=7, strides=2, expansion=4, use_projection=True,
                     zero_init_residual=False, stride_placement="per_axis",
                     query_key_fraction=1.0, max_global_length=33,
                     synchronized_batch_norm=True)
  config = block.get_config()
  assert AxialBlock.from_config(config).get_config() == config
  layer = AxialAttention2D(16, num_heads=4, span=5, strides=2, use_batch_norm=False)
  config = layer.get_config()
  assert AxialAttention2D.from_config(config).get_config() == config
  with pytest.raises(ValueError, match="stride_placement"):
    AxialAttention2D(16, stride_placement="before")
  with pytest.raises(ValueError, match="use_projection"):
    AxialBlock(8, num_heads=2, use_projection=False)(tf.zeros([1, 4, 4, 8]))
  with pytest.raises(ValueError, match="4-D"):
    AxialBlock(8, num_heads=2)(tf.zeros([1, 4, 8]))


def test_block_multiply_adds_by_hand():
  block = AxialBlock(8, num_heads=2, strides=2)  # 16 → 16 channels, projection
  h, w, c, f, key = 10, 6, 16, 8, 4
  attention = (h * w * f * (2 * key + f) + h * w * h * (3 * key + 2 * f)
               + h * w * f * (2 * key + f) + h * w * w * (3 * key + 2 * f))
  expected = h * w * c * f + attention + 5 * 3 * f * 16 + 5 * 3 * c * 16
  assert block.compute_multiply_adds([1, h, w, c]) == expected
