"""ISA: interlaced sparse self-attention.

Huang, Yuan et al., "Interlaced Sparse Self-Attention for Semantic Segmentation",
arXiv 1907.12273. Dense n×n self-attention is replaced by two sparse steps on a map
split into a Q_h×Q_w grid of P_h×P_w blocks (`partition = (P_h, P_w)`):

  1. long range: positions with the same offset inside their block attend to each other
     (P_h·P_w groups of Q_h·Q_w positions, spaced P apart);
  2. short range: positions inside the same block attend to each other
     (Q_h·Q_w groups of P_h·P_w positions).

After both steps every output depends on every input, at O(n·(P_hP_w + Q_hQ_w)) pairwise
cost instead of O(n²).
"""
import tensorflow as tf
import tf_keras

from deeplab_axial.layers import convolutions
from deeplab_axial.layers import graph_code

# Added to the logits of padded keys. Finite, so a group made only of padding (possible
# when a map side is smaller than the partition) gives uniform weights instead of NaN;
# such groups hold only padded queries, which are cropped away.
_MASKED_LOGIT = -1e9


def _check_positive_int_or_none(name, value):
  if value is not None and (isinstance(value, bool) or not isinstance(value, int) or
                            value < 1):
    raise ValueError(f"`{name}` must be None or a positive integer, got {value!r}.")


class _PaddedGrid:
  """Geometry of a `[batch, height, width, c]` map padded to a multiple of the partition.

  Rows are padded with `pad // 2` on top and the rest at the bottom (columns likewise), as
  the ISA code does; padded row `i` is block `i // P_h`, offset `i % P_h`.
  """

  def __init__(self, x, partition):
    self.partition_h, self.partition_w = partition
    shape = tf.shape(x)
    self.height, self.width = shape[1], shape[2]
    self.blocks_h = (self.height + self.partition_h - 1) // self.partition_h
    self.blocks_w = (self.width + self.partition_w - 1) // self.partition_w
    pad_h = self.blocks_h * self.partition_h - self.height
    pad_w = self.blocks_w * self.partition_w - self.width
    self.top, self.left = pad_h // 2, pad_w // 2
    self.paddings = [[0, 0], [self.top, pad_h - self.top], [self.left, pad_w - self.left],
                     [0, 0]]

  def to_groups(self, x, long_range):
    """[b, H, W, c] → padded, then `[b, groups, group_size, c]`.

    Long range: groups indexed by the intra-block offset (P_h·P_w groups of Q_h·Q_w);
    short range: groups indexed by the block (Q_h·Q_w groups of P_h·P_w).
    """
    x = tf.pad(x, self.paddings)
    batch, channels = tf.shape(x)[0], x.shape[-1]
    x = tf.reshape(x, [batch, self.blocks_h, self.partition_h, self.blocks_w,
                       self.partition_w, channels])
    if long_range:
      x = tf.transpose(x, [0, 2, 4, 1, 3, 5])
      groups, size = self.partition_h * self.partition_w, self.blocks_h * self.blocks_w
    else:
      x = tf.transpose(x, [0, 1, 3, 2, 4, 5])
      groups, size = self.blocks_h * self.blocks_w, self.partition_h * self.partition_w
    return tf.reshape(x, [batch, groups, size, channels])

  def from_groups(self, x, long_range):
    """Inverse of `to_groups`, including the crop: → `[b, H, W, c]`."""
    batch, channels = tf.shape(x)[0], x.shape[-1]
    if long_range:
      x = tf.reshape(x, [batch, self.partition_h, self.partition_w, self.blocks_h,
                         self.blocks_w, channels])
      x = tf.transpose(x, [0, 3, 1, 4, 2, 5])
    else:
      x = tf.reshape(x, [batch, self.blocks_h, self.blocks_w, self.partition_h,
                         self.partition_w, channels])
      x = tf.transpose(x, [0, 1, 3, 2, 4, 5])
    x = tf.reshape(x, [batch, self.blocks_h * self.partition_h,
                       self.blocks_w * self.partition_w, channels])
    return x[:, self.top:self.top + self.height, self.left:self.left + self.width, :]

  def valid_keys(self, long_range):
    """`[1, groups, group_size]` float32: 1 for real positions, 0 for padding."""
    ones = tf.ones([1, self.height, self.width, 1], tf.float32)
    return self.to_groups(ones, long_range)[..., 0]


class _SelfAttentionBlock(tf_keras.layers.Layer):
  """The self-attention used by each ISA step (ISA code `SelfAttentionBlock2D`).

  Query/key: two 1×1 conv-BN-ReLU; value: 1×1 conv without bias or normalization;
  attention `softmax(q·k / sqrt(key_channels))` within each group; output: 1×1
  conv-BN-ReLU. No residual. Projections are per position, so they run on the unpadded
  map and padded positions never enter the batch-norm statistics.
  """

  def __init__(self, key_channels, value_channels, output_channels, batch_norm_kwargs,
               **kwargs):
    super().__init__(**kwargs)
    self.key_channels = key_channels
    self.value_channels = value_channels
    self.output_channels = output_channels
    self.batch_norm_kwargs = batch_norm_kwargs

  def _conv(self, filters, name):
    return convolutions.ConvBNReLU(filters, 1, name=name, **self.batch_norm_kwargs)

  def build(self, input_shape):
    key_shape = tf.TensorShape(input_shape)[:-1].concatenate([self.key_channels])
    value_shape = tf.TensorShape(input_shape)[:-1].concatenate([self.value_channels])
    self.query = [self._conv(self.key_channels, "query_1"),
                  self._conv(self.key_channels, "query_2")]
    self.key = [self._conv(self.key_channels, "key_1"), self._conv(self.key_channels, "key_2")]
    self.value = tf_keras.layers.Conv2D(self.value_channels, 1, use_bias=False, name="value")
    self.output_projection = self._conv(self.output_channels, "output")
    for first, second in (self.query, self.key):
      first.build(input_shape)
      second.build(key_shape)
    self.value.build(input_shape)
    self.output_projection.build(value_shape)
    super().build(input_shape)

  @graph_code.graph_call
  def call(self, inputs, grid, long_range, training=None):
    """Attends within the groups of `grid`: `[b, H, W, c_in]` → `[b, H, W, c_out]`."""
    queries, keys = inputs, inputs
    for layer in self.query:
      queries = layer(queries, training=training)
    for layer in self.key:
      keys = layer(keys, training=training)
    values = self.value(inputs)
    # One pad/permute for the three projections.
    grouped = grid.to_groups(tf.concat([queries, keys, values], axis=-1), long_range)
    queries, keys, values = tf.split(
        grouped, [self.key_channels, self.key_channels, self.value_channels], axis=-1)
    logits = tf.einsum("bgic,bgjc->bgij", tf.cast(queries, tf.float32),
                       tf.cast(keys, tf.float32)) * (self.key_channels**-0.5)
    padding = 1.0 - grid.valid_keys(long_range)
    logits += padding[:, :, tf.newaxis, :] * _MASKED_LOGIT
    weights = tf.cast(tf.nn.softmax(logits, axis=-1), values.dtype)
    context = tf.einsum("bgij,bgjc->bgic", weights, values)
    return self.output_projection(grid.from_groups(context, long_range), training=training)


@tf_keras.saving.register_keras_serializable(package="deeplab_axial")
class InterlacedSparseSelfAttention(tf_keras.layers.Layer):
  """Interlaced sparse self-attention: long-range step, then short-range step.

  Each step is a self-attention block (separate weights) restricted to a group of
  positions (see the module docstring). A map whose sides are not multiples of the
  partition is padded (pad // 2 before, the rest after, per side) and the padded
  positions are masked out of every softmax, so the output at real positions depends
  only on real positions. Padding happens after the per-position projections, so in
  training the batch-norm statistics also see only real positions (the ISA code pads
  the input with zeros instead and lets the padding attend and be attended).

  Input: `[batch, height, width, channels]`, any (also unknown) height and width.
  Output: `[batch, height, width, output_channels]`.
  """

  def __init__(self,
               partition=(8, 8),
               key_channels=None,
               value_channels=None,
               output_channels=None,
               batch_norm_momentum=0.99,
               batch_norm_epsilon=1e-5,
               **kwargs):
    """Creates the layer.

    Args:
      partition: Block size (P_h, P_w) in positions (ISA: (8, 8)).
      key_channels: Query/key width; default `channels // 2` (ISA: 256 for 512).
      value_channels: Value width; default `channels`.
      output_channels: Output width of both steps; default `channels`.
      batch_norm_momentum: Keras momentum of the batch norms.
      batch_norm_epsilon: Epsilon of the batch norms.
      **kwargs: Base `Layer` arguments.
    """
    super().__init__(**kwargs)
    partition = tuple(partition) if isinstance(partition, (list, tuple)) else partition
    if (not isinstance(partition, tuple) or len(partition) != 2 or
        any(isinstance(p, bool) or not isinstance(p, int) or p < 1 for p in partition)):
      raise ValueError(f"`partition` must be a pair of positive integers (P_h, P_w), got "
                       f"{partition!r}.")
    for name, value in (("key_channels", key_channels), ("value_channels", value_channels),
                        ("output_channels", output_channels)):
      _check_positive_int_or_none(name, value)
    self.partition = partition
    self.key_channels = key_channels
    self.value_channels = value_channels
    self.output_channels = output_channels
    self.batch_norm_momentum = batch_norm_momentum
    self.batch_norm_epsilon = batch_norm_epsilon

  def build(self, input_shape):
    input_shape = tf.TensorShape(input_shape)
    channels = input_shape[-1]
    if channels is None:
      raise ValueError(f"{self.name}: the channel dimension of the input must be known, got "
                       f"input shape {input_shape}.")
    key_channels, value_channels, output_channels = self._widths(channels)
    batch_norm_kwargs = {
        "batch_norm_momentum": self.batch_norm_momentum,
        "batch_norm_epsilon": self.batch_norm_epsilon,
    }
    self.long_range = _SelfAttentionBlock(key_channels, value_channels, output_channels,
                                          batch_norm_kwargs, name="long_range")
    self.short_range = _SelfAttentionBlock(key_channels, value_channels, output_channels,
                                           batch_norm_kwargs, name="short_range")
    self.long_range.build(input_shape)
    self.short_range.build(input_shape[:-1].concatenate([output_channels]))
    super().build(input_shape)

  def _widths(self, channels):
    """(key, value, output) channels for `channels` input channels."""
    return (self.key_channels or max(channels // 2, 1), self.value_channels or channels,
            self.output_channels or channels)

  def compute_multiply_adds(self, input_shape):
    """Per-example multiply-adds of both steps, projections included.

    Per step: n·(2·(c_in·k + k²) + c_in·v + v·o) for the 1×1 projections of the n real
    positions, plus n_pad·g·(k + v) for affinity and aggregation, where n_pad is the padded
    map size and g the group size (Q_h·Q_w long range, P_h·P_w short range).

    Args:
      input_shape: `[batch, height, width, channels]` or `[height, width, channels]`.
    """
    height, width, channels = list(input_shape)[-3:]
    key, value, output = self._widths(channels)
    partition_h, partition_w = self.partition
    blocks = (-(-height // partition_h)) * (-(-width // partition_w))
    padded = blocks * partition_h * partition_w
    total = 0
    for step_in, group in ((channels, blocks), (output, partition_h * partition_w)):
      total += height * width * (2 * (step_in * key + key * key) + step_in * value
                                 + value * output)
      total += padded * group * (key + value)
    return int(total)

  @graph_code.graph_call
  def call(self, inputs, training=None):
    grid = _PaddedGrid(inputs, self.partition)
    x = self.long_range(inputs, grid=grid, long_range=True, training=training)
    return self.short_range(x, grid=grid, long_range=False, training=training)

  def get_config(self):
    config = super().get_config()
    config.update({
        "partition": list(self.partition),
        "key_channels": self.key_channels,
        "value_channels": self.value_channels,
        "output_channels": self.output_channels,
        "batch_norm_momentum": self.batch_norm_momentum,
        "batch_norm_epsilon": self.batch_norm_epsilon,
    })
    return config
