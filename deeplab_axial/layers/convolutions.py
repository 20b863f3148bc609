"""Small convolutional building blocks shared by backbones and decoders.

All layers take and return NHWC tensors, work with unknown (None) height and width, and
keep batch-normalization statistics in float32 under `mixed_float16` (tf_keras does that
for `BatchNormalization`).

Padding convention: stride-1 convolutions use symmetric 'same' padding; strided
convolutions pad `dilation_rate * (kernel_size - 1)` pixels split evenly before and after
(PyTorch/torchvision style) and then convolve without padding. Both give
`ceil(size / stride)` outputs; the explicit padding keeps pixel alignment identical to the
PyTorch reference models on even-sized inputs, where Keras 'same' would pad one pixel more
at the end than at the start.
"""
import tensorflow as tf
import tf_keras

from deeplab_axial.layers import graph_code
from deeplab_axial.layers import validation

_SERIALIZATION_PACKAGE = "deeplab_axial"


def _fresh(initializer):
  """A new instance of `initializer`: unseeded instances repeat values when reused."""
  return tf_keras.initializers.deserialize(tf_keras.initializers.serialize(initializer))


def _batch_norm(momentum, epsilon, gamma_initializer="ones", name="bn"):
  return tf_keras.layers.BatchNormalization(
      momentum=momentum, epsilon=epsilon, gamma_initializer=gamma_initializer, name=name)


@tf_keras.saving.register_keras_serializable(package=_SERIALIZATION_PACKAGE)
class ConvBNReLU(tf_keras.layers.Layer):
  """Conv2D, then optional BatchNorm, then optional ReLU.

  Input `[batch, height, width, in_channels]` → output
  `[batch, ceil(height / strides), ceil(width / strides), filters]`.

  Args:
    filters: output channels.
    kernel_size: square kernel size.
    strides: square stride.
    dilation_rate: atrous rate of the convolution.
    use_relu: apply ReLU at the end.
    use_batch_norm: apply BatchNormalization after the convolution.
    use_bias: convolution bias; defaults to `not use_batch_norm` (a bias before BN is
      redundant).
    kernel_initializer: initializer (name, config dict or object) of the conv kernel.
    gamma_initializer: initializer of the BN scale; "zeros" makes a residual branch
      start as identity.
    batch_norm_momentum, batch_norm_epsilon: BatchNormalization hyper-parameters.
  """

  def __init__(self, filters, kernel_size, strides=1, dilation_rate=1, use_relu=True,
               use_batch_norm=True, use_bias=None, kernel_initializer="he_normal",
               gamma_initializer="ones", batch_norm_momentum=0.99, batch_norm_epsilon=1e-5,
               **kwargs):
    super().__init__(**kwargs)
    for argument, value in (("filters", filters), ("kernel_size", kernel_size),
                            ("strides", strides), ("dilation_rate", dilation_rate)):
      validation.check_positive_int(argument, value, self.name)
    if strides > 1 and dilation_rate > 1:
      raise ValueError(f"{self.name}: `strides` ({strides}) and `dilation_rate` "
                       f"({dilation_rate}) cannot both be > 1.")
    self.filters = filters
    self.kernel_size = kernel_size
    self.strides = strides
    self.dilation_rate = dilation_rate
    self.use_relu = use_relu
    self.use_batch_norm = use_batch_norm
    self.use_bias = (not use_batch_norm) if use_bias is None else use_bias
    self.kernel_initializer = tf_keras.initializers.get(kernel_initializer)
    self.gamma_initializer = tf_keras.initializers.get(gamma_initializer)
    self.batch_norm_momentum = batch_norm_momentum
    self.batch_norm_epsilon = batch_norm_epsilon
    # Strided convolutions pad explicitly (see module docstring); stride 1 uses 'same'.
    self._explicit_padding = strides > 1 and kernel_size > 1
    self.conv = tf_keras.layers.Conv2D(
        filters, kernel_size, strides=strides, dilation_rate=dilation_rate,
        padding="valid" if self._explicit_padding else "same", use_bias=self.use_bias,
        kernel_initializer=self.kernel_initializer, name="conv")
    self.bn = (_batch_norm(batch_norm_momentum, batch_norm_epsilon, self.gamma_initializer)
               if use_batch_norm else None)

  def build(self, input_shape):
    input_shape = tf.TensorShape(input_shape)
    if self._explicit_padding:
      padded = input_shape[:1].concatenate([None, None]).concatenate(input_shape[3:])
      self.conv.build(padded)
    else:
      self.conv.build(input_shape)
    if self.bn is not None:
      self.bn.build(input_shape[:-1].concatenate([self.filters]))
    super().build(input_shape)

  @graph_code.graph_call
  def call(self, inputs, training=None):
    x = inputs
    if self._explicit_padding:
      total = self.dilation_rate * (self.kernel_size - 1)
      before = total // 2
      x = tf.pad(x, [[0, 0], [before, total - before], [before, total - before], [0, 0]])
    x = self.conv(x)
    if self.bn is not None:
      x = self.bn(x, training=training)
    if self.use_relu:
      x = tf.nn.relu(x)
    return x

  def compute_output_shape(self, input_shape):
    input_shape = tf.TensorShape(input_shape)
    spatial = [None if size is None else -(-size // self.strides)
               for size in input_shape[1:3]]
    return tf.TensorShape([input_shape[0], *spatial, self.filters])

  def get_config(self):
    config = super().get_config()
    config.update({
        "filters": self.filters,
        "kernel_size": self.kernel_size,
        "strides": self.strides,
        "dilation_rate": self.dilation_rate,
        "use_relu": self.use_relu,
        "use_batch_norm": self.use_batch_norm,
        "use_bias": self.use_bias,
        "kernel_initializer": tf_keras.initializers.serialize(self.kernel_initializer),
        "gamma_initializer": tf_keras.initializers.serialize(self.gamma_initializer),
        "batch_norm_momentum": self.batch_norm_momentum,
        "batch_norm_epsilon": self.batch_norm_epsilon,
    })
    return config


@tf_keras.saving.register_keras_serializable(package=_SERIALIZATION_PACKAGE)
class SeparableConvBNReLU(tf_keras.layers.Layer):
  """Depthwise k×k conv + BN + ReLU, then pointwise 1×1 conv + BN + ReLU (DeepLab2 style).

  Unlike `tf_keras.layers.SeparableConv2D`, there is a BN + ReLU between the depthwise and
  the pointwise convolution.

  Input `[batch, height, width, in_channels]` → output `[batch, height, width, filters]`.

  Args:
    filters: output channels of the pointwise convolution.
    kernel_size: depthwise kernel size (5 in Panoptic-DeepLab's decoder and heads).
    dilation_rate: atrous rate of the depthwise convolution.
    kernel_initializer: initializer of both kernels.
    batch_norm_momentum, batch_norm_epsilon: BatchNormalization hyper-parameters.
  """

  def __init__(self, filters, kernel_size=5, dilation_rate=1, kernel_initializer="he_normal",
               batch_norm_momentum=0.99, batch_norm_epsilon=1e-5, **kwargs):
    super().__init__(**kwargs)
    for argument, value in (("filters", filters), ("kernel_size", kernel_size),
                            ("dilation_rate", dilation_rate)):
      validation.check_positive_int(argument, value, self.name)
    self.filters = filters
    self.kernel_size = kernel_size
    self.dilation_rate = dilation_rate
    self.kernel_initializer = tf_keras.initializers.get(kernel_initializer)
    self.batch_norm_momentum = batch_norm_momentum
    self.batch_norm_epsilon = batch_norm_epsilon
    self.depthwise = tf_keras.layers.DepthwiseConv2D(
        kernel_size, dilation_rate=dilation_rate, padding="same", use_bias=False,
        depthwise_initializer=_fresh(self.kernel_initializer), name="depthwise")
    self.depthwise_bn = _batch_norm(batch_norm_momentum, batch_norm_epsilon,
                                    name="depthwise_bn")
    self.pointwise = ConvBNReLU(
        filters, 1, kernel_initializer=_fresh(self.kernel_initializer),
        batch_norm_momentum=batch_norm_momentum, batch_norm_epsilon=batch_norm_epsilon,
        name="pointwise")

  def build(self, input_shape):
    input_shape = tf.TensorShape(input_shape)
    self.depthwise.build(input_shape)
    self.depthwise_bn.build(input_shape)
    self.pointwise.build(input_shape)
    super().build(input_shape)

  @graph_code.graph_call
  def call(self, inputs, training=None):
    x = self.depthwise(inputs)
    x = tf.nn.relu(self.depthwise_bn(x, training=training))
    return self.pointwise(x, training=training)

  def get_config(self):
    config = super().get_config()
    config.update({
        "filters": self.filters,
        "kernel_size": self.kernel_size,
        "dilation_rate": self.dilation_rate,
        "kernel_initializer": tf_keras.initializers.serialize(self.kernel_initializer),
        "batch_norm_momentum": self.batch_norm_momentum,
        "batch_norm_epsilon": self.batch_norm_epsilon,
    })
    return config


@tf_keras.saving.register_keras_serializable(package=_SERIALIZATION_PACKAGE)
class ASPP(tf_keras.layers.Layer):
  """Atrous Spatial Pyramid Pooling (DeepLabV3), as used by Panoptic-DeepLab.

  Five parallel branches, each ending in BN + ReLU with `filters` channels: a 1×1 conv,
  three 3×3 atrous convs (`atrous_rates`), and image pooling (global average → 1×1 conv,
  broadcast back). They are concatenated, projected by a 1×1 conv + BN + ReLU to `filters`
  channels, and passed through dropout.

  Image pooling averages over the whole feature map (true global pooling), so the layer
  works for any input size; DeepLab2 instead fixes the pool window to crop / output stride.

  Input `[batch, height, width, in_channels]` → output `[batch, height, width, filters]`.

  Args:
    filters: channels of every branch and of the output.
    atrous_rates: three dilation rates of the 3×3 branches ((6, 12, 18) at output stride 16).
    dropout_rate: dropout after the projection (training only).
    use_separable_conv: make the atrous branches `SeparableConvBNReLU` instead of regular
      3×3 convs (the PyTorch Panoptic-DeepLab variant; papers.md §6 #16).
    batch_norm_momentum, batch_norm_epsilon: BatchNormalization hyper-parameters.
  """

  def __init__(self, filters=256, atrous_rates=(6, 12, 18), dropout_rate=0.1,
               use_separable_conv=False, batch_norm_momentum=0.99, batch_norm_epsilon=1e-5,
               **kwargs):
    super().__init__(**kwargs)
    validation.check_positive_int("filters", filters, self.name)
    atrous_rates = tuple(atrous_rates)
    if len(atrous_rates) != 3:
      raise ValueError(f"{self.name}: `atrous_rates` must hold 3 rates, got {atrous_rates}.")
    for rate in atrous_rates:
      validation.check_positive_int("atrous_rates", rate, self.name)
    if not 0.0 <= dropout_rate < 1.0:
      raise ValueError(f"{self.name}: `dropout_rate` must be in [0, 1), got {dropout_rate}.")
    self.filters = filters
    self.atrous_rates = atrous_rates
    self.dropout_rate = dropout_rate
    self.use_separable_conv = use_separable_conv
    self.batch_norm_momentum = batch_norm_momentum
    self.batch_norm_epsilon = batch_norm_epsilon
    bn_args = {"batch_norm_momentum": batch_norm_momentum,
               "batch_norm_epsilon": batch_norm_epsilon}
    self.conv_1x1 = ConvBNReLU(filters, 1, name="conv_1x1", **bn_args)
    if use_separable_conv:
      self.atrous_convs = [
          SeparableConvBNReLU(filters, 3, dilation_rate=rate, name=f"atrous_{rate}", **bn_args)
          for rate in atrous_rates]
    else:
      self.atrous_convs = [
          ConvBNReLU(filters, 3, dilation_rate=rate, name=f"atrous_{rate}", **bn_args)
          for rate in atrous_rates]
    self.pool_conv = ConvBNReLU(filters, 1, name="pool_conv", **bn_args)
    self.projection = ConvBNReLU(filters, 1, name="projection", **bn_args)
    self.dropout = tf_keras.layers.Dropout(dropout_rate)

  def build(self, input_shape):
    input_shape = tf.TensorShape(input_shape)
    for branch in [self.conv_1x1, *self.atrous_convs]:
      branch.build(input_shape)
    self.pool_conv.build(input_shape[:1].concatenate([1, 1]).concatenate(input_shape[3:]))
    self.projection.build(input_shape[:-1].concatenate([5 * self.filters]))
    super().build(input_shape)

  @graph_code.graph_call
  def call(self, inputs, training=None):
    branches = [self.conv_1x1(inputs, training=training)]
    branches += [conv(inputs, training=training) for conv in self.atrous_convs]
    # The mean over a large map is taken in float32 to stay accurate under mixed precision.
    pooled = tf.reduce_mean(tf.cast(inputs, tf.float32), axis=[1, 2], keepdims=True)
    pooled = self.pool_conv(tf.cast(pooled, inputs.dtype), training=training)
    shape = tf.shape(inputs)
    branches.append(tf.broadcast_to(pooled, [shape[0], shape[1], shape[2], self.filters]))
    x = self.projection(tf.concat(branches, axis=-1), training=training)
    return self.dropout(x, training=training)

  def get_config(self):
    config = super().get_config()
    config.update({
        "filters": self.filters,
        "atrous_rates": list(self.atrous_rates),
        "dropout_rate": self.dropout_rate,
        "use_separable_conv": self.use_separable_conv,
        "batch_norm_momentum": self.batch_norm_momentum,
        "batch_norm_epsilon": self.batch_norm_epsilon,
    })
    return config


@tf_keras.saving.register_keras_serializable(package=_SERIALIZATION_PACKAGE)
class InceptionStem(tf_keras.layers.Layer):
  """Panoptic-DeepLab's three-conv stem: 3×3/2 → 64, 3×3 → 64, 3×3 → 128, each + BN + ReLU.

  Input `[batch, height, width, 3]` → output
  `[batch, ceil(height / 2), ceil(width / 2), filters[-1]]`.

  Args:
    filters: output channels of the three convolutions.
    kernel_initializer: initializer of the conv kernels.
    batch_norm_momentum, batch_norm_epsilon: BatchNormalization hyper-parameters.
  """

  def __init__(self, filters=(64, 64, 128), kernel_initializer="he_normal",
               batch_norm_momentum=0.99, batch_norm_epsilon=1e-5, **kwargs):
    super().__init__(**kwargs)
    filters = tuple(filters)
    if len(filters) != 3:
      raise ValueError(f"{self.name}: `filters` must hold 3 widths, got {filters}.")
    for width in filters:
      validation.check_positive_int("filters", width, self.name)
    self.filters = filters
    self.kernel_initializer = tf_keras.initializers.get(kernel_initializer)
    self.batch_norm_momentum = batch_norm_momentum
    self.batch_norm_epsilon = batch_norm_epsilon
    self.convs = [
        ConvBNReLU(width, 3, strides=2 if index == 0 else 1,
                   kernel_initializer=_fresh(self.kernel_initializer),
                   batch_norm_momentum=batch_norm_momentum,
                   batch_norm_epsilon=batch_norm_epsilon, name=f"conv{index + 1}")
        for index, width in enumerate(filters)]

  def build(self, input_shape):
    shape = tf.TensorShape(input_shape)
    for conv in self.convs:
      conv.build(shape)
      shape = conv.compute_output_shape(shape)
    super().build(input_shape)

  @graph_code.graph_call
  def call(self, inputs, training=None):
    x = inputs
    for conv in self.convs:
      x = conv(x, training=training)
    return x

  def compute_output_shape(self, input_shape):
    shape = tf.TensorShape(input_shape)
    for conv in self.convs:
      shape = conv.compute_output_shape(shape)
    return shape

  def get_config(self):
    config = super().get_config()
    config.update({
        "filters": list(self.filters),
        "kernel_initializer": tf_keras.initializers.serialize(self.kernel_initializer),
        "batch_norm_momentum": self.batch_norm_momentum,
        "batch_norm_epsilon": self.batch_norm_epsilon,
    })
    return config
