"""2-D axial attention (height then width) and the Axial-ResNet bottleneck block.

Sublayer names follow the official PyTorch axialnet so that its state_dict maps onto
them one to one:

| PyTorch (`AxialBlock`)  | here (`AxialBlock`)                                      |
|-------------------------|----------------------------------------------------------|
| conv_down, bn1          | conv_down (Conv2D 1x1, no bias), bn1                     |
| hight_block             | attention.height_attention (PositionSensitiveAxialAttention) |
| width_block             | attention.width_attention                                |
| conv_up, bn2            | conv_up, bn2                                             |
| downsample.0 / .1       | downsample_conv / downsample_bn (only when projecting)   |

Stride placement (`stride_placement`):
* "after_width" (default, official PyTorch): both attention layers run at the input
  resolution and the width layer's output is average-pooled s x s on both axes
  (PT `AvgPool2d(s, s)` in the width block).
* "per_axis" (AD §3.2): each axis is pooled by s right after its own attention layer, so
  the width layer already runs on the pooled height.
Both produce ceil(size / s) positions per axis, matching the strided 1x1 shortcut.
"""
import tensorflow as tf
import tf_keras

from deeplab_axial.layers import axial_attention
from deeplab_axial.layers import graph_code
from deeplab_axial.layers import recompute
from deeplab_axial.layers import validation

_STRIDE_PLACEMENTS = ("after_width", "per_axis")


def _conv_initializer():
  # PyTorch kaiming_normal_(mode="fan_out", nonlinearity="relu"), as the official code.
  return tf_keras.initializers.VarianceScaling(2.0, "fan_out", "untruncated_normal")


def _is_true(training):
  """Whether a `training` argument is statically True (a Python or constant bool)."""
  return training is not None and bool(tf.get_static_value(training))


@tf_keras.saving.register_keras_serializable(package="deeplab_axial")
class AxialAttention2D(tf_keras.layers.Layer):
  """Height-axis then width-axis position-sensitive attention.

  Input `[batch, height, width, in_channels]` → output
  `[batch, ceil(height / strides), ceil(width / strides), filters]`.
  Sublayers: `height_attention`, `width_attention`. Extra keyword arguments of
  `PositionSensitiveAxialAttention` (query_key_fraction, use_batch_norm,
  max_global_length, batch_norm_momentum, batch_norm_epsilon, synchronized_batch_norm,
  kernel_initializer, relative_initializer) are passed to both layers.
  """

  _ATTENTION_ARGS = ("query_key_fraction", "use_batch_norm", "max_global_length",
                     "batch_norm_momentum", "batch_norm_epsilon",
                     "synchronized_batch_norm", "kernel_initializer",
                     "relative_initializer")

  def __init__(self, filters, num_heads=8, span=None, strides=1,
               stride_placement="after_width", **kwargs):
    attention_kwargs = {name: kwargs.pop(name) for name in self._ATTENTION_ARGS
                        if name in kwargs}
    super().__init__(**kwargs)
    validation.check_positive_int("strides", strides)
    if stride_placement not in _STRIDE_PLACEMENTS:
      raise ValueError(f"`stride_placement` must be one of {_STRIDE_PLACEMENTS}, got "
                       f"{stride_placement!r}.")
    self.filters = filters
    self.num_heads = num_heads
    self.span = span
    self.strides = strides
    self.stride_placement = stride_placement
    per_axis = stride_placement == "per_axis"
    common = dict(filters=filters, num_heads=num_heads, span=span,
                  dtype=self.dtype_policy, **attention_kwargs)
    self.height_attention = axial_attention.PositionSensitiveAxialAttention(
        axis="height", strides=strides if per_axis else 1, name="height_attention",
        **common)
    self.width_attention = axial_attention.PositionSensitiveAxialAttention(
        axis="width", strides=strides if per_axis else 1, name="width_attention", **common)

  def build(self, input_shape):
    input_shape = tf.TensorShape(input_shape)
    self.height_attention.build(input_shape)
    self.width_attention.build(self.height_attention.compute_output_shape(input_shape))
    super().build(input_shape)

  @graph_code.graph_call
  def call(self, inputs, training=None):
    outputs = self.height_attention(inputs, training=training)
    outputs = self.width_attention(outputs, training=training)
    if self.stride_placement == "after_width":
      outputs = axial_attention.average_pool(outputs, (self.strides, self.strides))
    return outputs

  def compute_output_shape(self, input_shape):
    shape = tf.TensorShape(input_shape).as_list()
    for index in (1, 2):
      if shape[index] is not None:
        shape[index] = -(-shape[index] // self.strides)
    shape[-1] = self.filters
    return tf.TensorShape(shape)

  def compute_multiply_adds(self, input_shape):
    """Multiply-adds of one forward pass (both 1-D layers; pooling not counted)."""
    height, width, channels = list(input_shape)[-3:]
    total = self.height_attention.compute_multiply_adds([height, width, channels])
    if self.stride_placement == "per_axis":
      height = -(-height // self.strides)
    return total + self.width_attention.compute_multiply_adds([height, width, self.filters])

  def get_config(self):
    config = super().get_config()
    attention_config = self.height_attention.get_config()
    config.update({name: attention_config[name] for name in self._ATTENTION_ARGS})
    config.update(filters=self.filters, num_heads=self.num_heads, span=self.span,
                  strides=self.strides, stride_placement=self.stride_placement)
    return config


@tf_keras.saving.register_keras_serializable(package="deeplab_axial")
class AxialBlock(graph_code.OutputSpecFromShape, tf_keras.layers.Layer):
  """Axial-ResNet bottleneck: the 3x3 conv of a ResNet bottleneck replaced by 2-D axial
  attention (AD §3.2, Fig. 2; official PyTorch `AxialBlock`).

  conv_down 1x1 (→ filters) + bn1 + ReLU → attention (height then width, stride s)
  → ReLU → conv_up 1x1 (→ filters * expansion) + bn2 → + shortcut → ReLU.
  The shortcut is identity, or a strided 1x1 conv + BN (`downsample_conv`,
  `downsample_bn`) when the stride or the channel count changes.

  Input `[batch, height, width, in_channels]` → output
  `[batch, ceil(height / strides), ceil(width / strides), filters * expansion]`.
  """

  def __init__(self, filters, num_heads=8, span=None, strides=1, expansion=2,
               use_projection=None, zero_init_residual=True,
               stride_placement="after_width", query_key_fraction=0.5,
               use_batch_norm=True,
               max_global_length=axial_attention.DEFAULT_MAX_GLOBAL_LENGTH,
               batch_norm_momentum=0.9, batch_norm_epsilon=1e-5,
               synchronized_batch_norm=False, recompute=False, **kwargs):
    """Creates the block.

    Args:
      filters: Width of the attention (value depth, channels after conv_down).
      num_heads: Attention heads.
      span: None (global) or an odd local span, for both axes.
      strides: Downsampling factor of the block (see module docstring).
      expansion: Output channels = filters * expansion.
      use_projection: Projection shortcut; None decides at build time (used when the
        stride is > 1 or the input channels differ from the output channels).
      zero_init_residual: Initialize bn2's gamma to 0 (block starts as identity).
      stride_placement: "after_width" (official PyTorch) or "per_axis" (paper).
      query_key_fraction, use_batch_norm, max_global_length: see
        `PositionSensitiveAxialAttention` (use_batch_norm only affects the attention).
      batch_norm_momentum, batch_norm_epsilon, synchronized_batch_norm: for every batch
        norm of the block.
      recompute: in training, keep only the block's input for the backward pass and
        recompute its activations there (`deeplab_axial.layers.recompute`): less memory,
        about one more forward pass of time. Same maths, weights and moving-statistics
        updates; inference is unchanged.
      **kwargs: Base `Layer` arguments.
    """
    super().__init__(**kwargs)
    validation.check_positive_int("filters", filters)
    validation.check_positive_int("expansion", expansion)
    self.filters = filters
    self.num_heads = num_heads
    self.span = span
    self.strides = strides
    self.expansion = expansion
    self.use_projection = use_projection
    self.zero_init_residual = zero_init_residual
    self.stride_placement = stride_placement
    self.query_key_fraction = query_key_fraction
    self.use_batch_norm = use_batch_norm
    self.max_global_length = max_global_length
    self.batch_norm_momentum = batch_norm_momentum
    self.batch_norm_epsilon = batch_norm_epsilon
    self.synchronized_batch_norm = synchronized_batch_norm
    self.recompute = bool(recompute)

    self.conv_down = self._conv(filters, 1, "conv_down")
    self.bn1 = self._batch_norm("bn1")
    self.attention = AxialAttention2D(
        filters, num_heads=num_heads, span=span, strides=strides,
        stride_placement=stride_placement, query_key_fraction=query_key_fraction,
        use_batch_norm=use_batch_norm, max_global_length=max_global_length,
        batch_norm_momentum=batch_norm_momentum, batch_norm_epsilon=batch_norm_epsilon,
        synchronized_batch_norm=synchronized_batch_norm, name="attention",
        dtype=self.dtype_policy)
    self.conv_up = self._conv(filters * expansion, 1, "conv_up")
    self.bn2 = self._batch_norm("bn2", gamma_initializer="zeros" if zero_init_residual
                                else "ones")
    self.downsample_conv = None
    self.downsample_bn = None

  def _conv(self, filters, strides, name):
    return tf_keras.layers.Conv2D(filters, 1, strides=strides, use_bias=False,
                                  kernel_initializer=_conv_initializer(), name=name,
                                  dtype=self.dtype_policy)

  def _batch_norm(self, name, gamma_initializer="ones"):
    return recompute.PausableBatchNormalization(
        momentum=self.batch_norm_momentum, epsilon=self.batch_norm_epsilon,
        synchronized=self.synchronized_batch_norm, gamma_initializer=gamma_initializer,
        name=name, dtype=self.dtype_policy)

  @property
  def output_channels(self):
    return self.filters * self.expansion

  def build(self, input_shape):
    input_shape = tf.TensorShape(input_shape)
    if input_shape.rank != 4 or input_shape[-1] is None:
      raise ValueError(f"AxialBlock expects a 4-D [batch, height, width, channels] input "
                       f"with known channels, got shape {input_shape}.")
    project = self.use_projection
    if project is None:
      project = self.strides > 1 or input_shape[-1] != self.output_channels
    if not project and (self.strides > 1 or input_shape[-1] != self.output_channels):
      raise ValueError(
          f"`use_projection=False` needs strides 1 and {self.output_channels} input "
          f"channels, got strides {self.strides} and input shape {input_shape}.")
    if project:
      self.downsample_conv = self._conv(self.output_channels, self.strides,
                                        "downsample_conv")
      self.downsample_bn = self._batch_norm("downsample_bn")
    # Build every sublayer now so that weights can be loaded before the first call.
    bottleneck = input_shape[:-1].concatenate([self.filters])
    self.conv_down.build(input_shape)
    self.bn1.build(bottleneck)
    self.attention.build(bottleneck)
    reduced = self.attention.compute_output_shape(bottleneck)
    self.conv_up.build(reduced)
    self.bn2.build(reduced[:-1].concatenate([self.output_channels]))
    if project:
      self.downsample_conv.build(input_shape)
      self.downsample_bn.build(reduced[:-1].concatenate([self.output_channels]))
    super().build(input_shape)

  @graph_code.graph_call
  def call(self, inputs, training=None):
    if self.recompute and _is_true(training):
      return recompute.recompute_grad(
          self, lambda tensor: self._residual(tensor, training=True), inputs)
    return self._residual(inputs, training)

  def _residual(self, inputs, training):
    """The block's function: `[b, h, w, c]` -> `[b, h / s, w / s, filters * expansion]`."""
    outputs = tf.nn.relu(self.bn1(self.conv_down(inputs), training=training))
    outputs = tf.nn.relu(self.attention(outputs, training=training))
    outputs = self.bn2(self.conv_up(outputs), training=training)
    shortcut = inputs
    if self.downsample_conv is not None:
      shortcut = self.downsample_bn(self.downsample_conv(inputs), training=training)
    return tf.nn.relu(outputs + shortcut)

  def compute_output_shape(self, input_shape):
    shape = self.attention.compute_output_shape(tf.TensorShape(input_shape)).as_list()
    shape[-1] = self.output_channels
    return tf.TensorShape(shape)

  def compute_multiply_adds(self, input_shape):
    """Multiply-adds of one forward pass: the three 1x1 convs plus the attention."""
    height, width, channels = list(input_shape)[-3:]
    out_height, out_width = -(-height // self.strides), -(-width // self.strides)
    total = height * width * channels * self.filters
    total += self.attention.compute_multiply_adds([height, width, self.filters])
    total += out_height * out_width * self.filters * self.output_channels
    project = self.use_projection
    if project is None:
      project = self.strides > 1 or channels != self.output_channels
    if project:
      total += out_height * out_width * channels * self.output_channels
    return int(total)

  def get_config(self):
    config = super().get_config()
    config.update(
        filters=self.filters, num_heads=self.num_heads, span=self.span,
        strides=self.strides, expansion=self.expansion,
        use_projection=self.use_projection, zero_init_residual=self.zero_init_residual,
        stride_placement=self.stride_placement,
        query_key_fraction=self.query_key_fraction, use_batch_norm=self.use_batch_norm,
        max_global_length=self.max_global_length,
        batch_norm_momentum=self.batch_norm_momentum,
        batch_norm_epsilon=self.batch_norm_epsilon,
        synchronized_batch_norm=self.synchronized_batch_norm, recompute=self.recompute)
    return config
