"""ISA against a NumPy reference written from the paper's group definitions.

The reference never reshapes or transposes: it builds each step's attention as a dense
n×n problem in which position j is a key of query i only if both are real positions and
belong to the same group, with groups defined on the padded grid (pad // 2 before):
  long range:  same offset inside the block, (r_i mod P_h, c_i mod P_w) equal;
  short range: same block, (r_i div P_h, c_i div P_w) equal.
"""
import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from deeplab_axial.layers import isa
from tests import helpers


def _softmax(x):
  x = x - x.max(axis=-1, keepdims=True)
  e = np.exp(x)
  return e / e.sum(axis=-1, keepdims=True)


def _conv_bn_relu(x, layer):
  """A 1×1 ConvBNReLU in inference mode, from its weights."""
  bn = layer.bn
  y = x @ layer.conv.kernel.numpy()[0, 0]
  y = (y - bn.moving_mean.numpy()) / np.sqrt(bn.moving_variance.numpy() + bn.epsilon)
  return np.maximum(y * bn.gamma.numpy() + bn.beta.numpy(), 0.0)


def _project(x, block):
  queries, keys = x, x
  for layer in block.query:
    queries = _conv_bn_relu(queries, layer)
  for layer in block.key:
    keys = _conv_bn_relu(keys, layer)
  return queries, keys, x @ block.value.kernel.numpy()[0, 0]


def _pointwise(x, block):
  """The block when every group holds one position: softmax over one key is 1."""
  return _conv_bn_relu(_project(x, block)[2], block.output_projection)


def _self_attention(x, block, allowed=None):
  """Self-attention block on one image x: [h, w, c]; `allowed[i, j]`: j is a key of i."""
  height, width, _ = x.shape
  queries, keys, values = (t.reshape(height * width, -1) for t in _project(x, block))
  logits = queries @ keys.T / np.sqrt(queries.shape[-1])
  if allowed is not None:
    logits = np.where(allowed, logits, -np.inf)
  context = _softmax(logits) @ values
  return _conv_bn_relu(context, block.output_projection).reshape(height, width, -1)


def _same_group(height, width, partition, long_range):
  """[n, n] bool: positions i, j (row-major) share a group on the padded grid."""
  rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
  padded = []
  for index, size, part in ((rows, height, partition[0]), (cols, width, partition[1])):
    before = (-(-size // part) * part - size) // 2
    index = index.reshape(-1) + before
    padded.append(index % part if long_range else index // part)
  return ((padded[0][:, None] == padded[0][None, :]) &
          (padded[1][:, None] == padded[1][None, :]))


def _isa_reference(x, layer):
  outputs = []
  for image in x.astype(np.float64):
    height, width, _ = image.shape
    long_mask = _same_group(height, width, layer.partition, long_range=True)
    short_mask = _same_group(height, width, layer.partition, long_range=False)
    y = _self_attention(image, layer.long_range, long_mask)
    outputs.append(_self_attention(y, layer.short_range, short_mask))
  return np.stack(outputs)


def _built_layer(x, **kwargs):
  layer = isa.InterlacedSparseSelfAttention(**kwargs)
  layer(x)
  helpers.randomize_batch_norms(layer, np.random.default_rng(0))
  return layer


def _random_input(shape):
  return np.random.randn(*shape).astype(np.float32)


@pytest.mark.parametrize("size,partition", [
    ((8, 12), (4, 3)),   # divisible: no padding, equals the unmasked definition
    ((6, 6), (2, 3)),
    ((7, 10), (3, 4)),   # padded: 2 rows (1 top, 1 bottom), 2 columns (1 left, 1 right)
    ((5, 9), (2, 4)),    # padded: 1 row (0 top, 1 bottom), 3 columns (1 left, 2 right)
])
def test_matches_numpy_reference(size, partition):
  x = _random_input([2, *size, 8])
  layer = _built_layer(x, partition=partition, key_channels=4, value_channels=6,
                       output_channels=5)
  y = layer(x, training=False).numpy()
  assert y.shape == (2, *size, 5)
  np.testing.assert_allclose(y, _isa_reference(x, layer), atol=1e-4)


@pytest.mark.parametrize("partition", [(5, 6), (8, 8)])
def test_one_block_is_pointwise_then_dense_self_attention(partition):
  """Partition covering the map (Q_h = Q_w = 1): each long-range group holds one real
  position, so the long step is the pointwise map out(value(x)); the single block makes
  the short step plain dense self-attention over the whole map. (8, 8) on 5×6 reaches
  this through padding and masking."""
  x = _random_input([1, 5, 6, 8])
  layer = _built_layer(x, partition=partition)
  pointwise = _pointwise(x[0].astype(np.float64), layer.long_range)
  expected = _self_attention(pointwise, layer.short_range)
  np.testing.assert_allclose(layer(x, training=False).numpy()[0], expected, atol=1e-4)


def test_unit_partition_is_dense_self_attention_then_pointwise():
  """P = (1, 1): the long step is dense attention over the map, the short step pointwise."""
  x = _random_input([1, 4, 5, 8])
  layer = _built_layer(x, partition=(1, 1))
  dense = _self_attention(x[0].astype(np.float64), layer.long_range)
  np.testing.assert_allclose(layer(x, training=False).numpy()[0],
                             _pointwise(dense, layer.short_range), atol=1e-4)


@pytest.mark.parametrize("size", [(8, 8), (7, 10), (1, 3)])
def test_grouping_round_trip(size):
  x = tf.constant(_random_input([2, *size, 3]))
  grid = isa._PaddedGrid(x, (3, 4))  # pylint: disable=protected-access
  for long_range in (True, False):
    np.testing.assert_array_equal(grid.from_groups(grid.to_groups(x, long_range),
                                                   long_range).numpy(), x.numpy())


def test_every_output_sees_every_input():
  x = tf.constant(_random_input([1, 6, 6, 8]))
  layer = _built_layer(x, partition=(3, 3))
  with tf.GradientTape() as tape:
    tape.watch(x)
    y = layer(x, training=False)
    target = tf.reduce_sum(y[0, 4, 1] ** 2)
  influence = tf.reduce_sum(tf.abs(tape.gradient(target, x)), axis=-1).numpy()
  assert np.all(influence > 0)


def test_config_round_trip_xla_and_unknown_sizes():
  x = _random_input([2, 7, 9, 8])
  layer = _built_layer(x, partition=[3, 4], key_channels=4, name="isa")
  clone = isa.InterlacedSparseSelfAttention.from_config(layer.get_config())
  clone(x)
  clone.set_weights(layer.get_weights())
  assert clone.get_config() == layer.get_config()
  expected = layer(x, training=False).numpy()
  np.testing.assert_allclose(clone(x, training=False).numpy(), expected, atol=1e-6)
  compiled = tf.function(lambda t: layer(t, training=False), jit_compile=True)
  np.testing.assert_allclose(compiled(x).numpy(), expected, atol=1e-4)
  inputs = tf_keras.Input([None, None, 8])
  model = tf_keras.Model(inputs, layer(inputs))
  for shape in ([1, 7, 9, 8], [2, 4, 13, 8], [1, 2, 2, 8]):
    z = _random_input(shape)
    y = model(z, training=False).numpy()
    assert y.shape == tuple(shape)
    np.testing.assert_allclose(y, _isa_reference(z, layer), atol=1e-4)


def test_training_step_is_finite_with_padding():
  x = tf.constant(_random_input([2, 5, 7, 8]))
  layer = isa.InterlacedSparseSelfAttention(partition=(4, 4))
  with tf.GradientTape() as tape:
    loss = tf.reduce_mean(layer(x, training=True) ** 2)
  gradients = tape.gradient(loss, layer.trainable_weights)
  assert all(np.all(np.isfinite(g.numpy())) for g in gradients)


@pytest.mark.usefixtures("mixed_precision")
def test_mixed_precision_close_to_reference():
  x = _random_input([1, 7, 9, 16])
  layer = _built_layer(x, partition=(4, 4))
  y = layer(x, training=False)
  assert y.dtype == tf.float16
  np.testing.assert_allclose(y.numpy().astype(np.float32), _isa_reference(x, layer),
                             atol=0.05, rtol=0.02)


@pytest.mark.parametrize("kwargs,message", [
    ({"partition": (8,)}, "partition"),
    ({"partition": (0, 8)}, "partition"),
    ({"partition": 8}, "partition"),
    ({"key_channels": 0}, "key_channels"),
    ({"value_channels": 2.5}, "value_channels"),
])
def test_bad_arguments_raise(kwargs, message):
  with pytest.raises(ValueError, match=message):
    isa.InterlacedSparseSelfAttention(**kwargs)


def test_multiply_adds_count_pairs_and_projections():
  layer = isa.InterlacedSparseSelfAttention((4, 4), key_channels=2, value_channels=3,
                                            output_channels=5)
  # 7×9 map → 2×3 blocks of 4×4, padded 8×12 = 96 positions; 63 real positions.
  projections_long = 63 * (2 * (8 * 2 + 4) + 8 * 3 + 3 * 5)
  projections_short = 63 * (2 * (5 * 2 + 4) + 5 * 3 + 3 * 5)
  pairs = 96 * 6 * (2 + 3) + 96 * 16 * (2 + 3)
  assert layer.compute_multiply_adds([1, 7, 9, 8]) == (projections_long + projections_short
                                                        + pairs)
