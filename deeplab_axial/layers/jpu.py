"""FastFCN joint pyramid upsampling (JPU).

Wu et al., "FastFCN: Rethinking Dilated Convolution in the Backbone for Semantic
Segmentation", arXiv 1903.11816. JPU rebuilds output-stride-8 features from the OS-8,
OS-16 and OS-32 maps of a non-dilated backbone, so the backbone can run at OS 32.
"""
import tensorflow as tf
import tf_keras

from deeplab_axial.layers import convolutions
from deeplab_axial.layers import graph_code

# Accepted dict keys, finest first: FastFCN's names and the backbone endpoint names.
_KEY_SETS = (("c3", "c4", "c5"), ("res3", "res4", "res5"))


def _ordered_features(inputs, layer_name):
  """Returns the three inputs as a list ordered OS 8, OS 16, OS 32."""
  if isinstance(inputs, dict):
    for keys in _KEY_SETS:
      if all(key in inputs for key in keys):
        return [inputs[key] for key in keys]
    raise ValueError(f"{layer_name}: a dict input needs the keys {_KEY_SETS[0]} or "
                     f"{_KEY_SETS[1]}, got {sorted(inputs)}.")
  if isinstance(inputs, (list, tuple)) and len(inputs) == 3:
    return list(inputs)
  raise ValueError(f"{layer_name}: expected a list [os8, os16, os32] or a dict with keys "
                   f"{_KEY_SETS[0]} or {_KEY_SETS[1]}, got {inputs!r}.")


class _DilatedSeparableBranch(tf_keras.layers.Layer):
  """Depthwise 3×3 (dilated) → BN → pointwise 1×1 → BN → ReLU, as FastFCN's branches.

  Unlike `convolutions.SeparableConvBNReLU` there is no ReLU after the depthwise BN.
  `[batch, height, width, in_channels]` → `[batch, height, width, filters]`.
  """

  def __init__(self, filters, dilation_rate, batch_norm_momentum, batch_norm_epsilon,
               **kwargs):
    super().__init__(**kwargs)
    self.depthwise = tf_keras.layers.DepthwiseConv2D(
        3, dilation_rate=dilation_rate, padding="same", use_bias=False,
        depthwise_initializer="he_normal", name="depthwise")
    self.depthwise_bn = tf_keras.layers.BatchNormalization(
        momentum=batch_norm_momentum, epsilon=batch_norm_epsilon, name="depthwise_bn")
    self.pointwise = convolutions.ConvBNReLU(
        filters, 1, batch_norm_momentum=batch_norm_momentum,
        batch_norm_epsilon=batch_norm_epsilon, name="pointwise")

  def build(self, input_shape):
    for layer in (self.depthwise, self.depthwise_bn, self.pointwise):
      layer.build(input_shape)
    super().build(input_shape)

  @graph_code.graph_call
  def call(self, inputs, training=None):
    x = self.depthwise_bn(self.depthwise(inputs), training=training)
    return self.pointwise(x, training=training)


@tf_keras.saving.register_keras_serializable(package="deeplab_axial")
class JointPyramidUpsampling(tf_keras.layers.Layer):
  """Joint pyramid upsampling.

  1. Each input: 3×3 conv-BN-ReLU to `filters`.
  2. The OS-16 and OS-32 results are resized (bilinear, align_corners=True as in the
     FastFCN code) to the exact size of the OS-8 one and concatenated in the order
     [OS 8, OS 16, OS 32] (the FastFCN code uses [OS 32, OS 16, OS 8]; this only matters
     for weight porting). Corner alignment also matches 'same'-padded stride-2 grids of
     odd sizes (e.g. 65 → 33 → 17), and it compiles correctly under XLA, where
     half-pixel bilinear resizing by non-integer factors returns wrong values on CPU
     (TF 2.21).
  3. One branch per dilation rate: depthwise 3×3 (dilated) → BN → pointwise 1×1 to
     `filters` → BN → ReLU.
  4. The branch outputs are concatenated.

  Input: `[os8, os16, os32]` or a dict with keys `c3, c4, c5` (or `res3, res4, res5`),
    shapes `[batch, h8, w8, c3]`, `[batch, h16, w16, c4]`, `[batch, h32, w32, c5]`.
  Output: `[batch, h8, w8, len(dilation_rates) * filters]` (2048 for the defaults).
  """

  def __init__(self,
               filters=512,
               dilation_rates=(1, 2, 4, 8),
               batch_norm_momentum=0.99,
               batch_norm_epsilon=1e-5,
               **kwargs):
    """Creates the layer.

    Args:
      filters: Width of every lateral conv and every dilated branch.
      dilation_rates: One separable branch per rate.
      batch_norm_momentum: Keras momentum of the batch norms.
      batch_norm_epsilon: Epsilon of the batch norms.
      **kwargs: Base `Layer` arguments.
    """
    super().__init__(**kwargs)
    if isinstance(filters, bool) or not isinstance(filters, int) or filters < 1:
      raise ValueError(f"`filters` must be a positive integer, got {filters!r}.")
    dilation_rates = tuple(dilation_rates)
    if not dilation_rates or any(
        isinstance(r, bool) or not isinstance(r, int) or r < 1 for r in dilation_rates):
      raise ValueError(f"`dilation_rates` must be a non-empty sequence of positive integers, "
                       f"got {dilation_rates!r}.")
    self.filters = filters
    self.dilation_rates = dilation_rates
    self.batch_norm_momentum = batch_norm_momentum
    self.batch_norm_epsilon = batch_norm_epsilon

  def build(self, input_shape):
    shapes = [tf.TensorShape(shape) for shape in _ordered_features(input_shape, self.name)]
    for stride, shape in zip((8, 16, 32), shapes):
      if shape.rank != 4 or shape[-1] is None:
        raise ValueError(f"{self.name}: the OS-{stride} input must be [batch, height, width, "
                         f"channels] with known channels, got {shape}.")
    batch_norm_kwargs = {"batch_norm_momentum": self.batch_norm_momentum,
                         "batch_norm_epsilon": self.batch_norm_epsilon}
    self.laterals = [convolutions.ConvBNReLU(self.filters, 3, name=f"lateral_os{stride}",
                                             **batch_norm_kwargs)
                     for stride in (8, 16, 32)]
    for lateral, shape in zip(self.laterals, shapes):
      lateral.build(shape)
    joint_shape = shapes[0][:-1].concatenate([3 * self.filters])
    self.branches = [_DilatedSeparableBranch(self.filters, rate, name=f"dilation_{rate}",
                                             **batch_norm_kwargs)
                     for rate in self.dilation_rates]
    for branch in self.branches:
      branch.build(joint_shape)
    super().build(input_shape)

  @graph_code.graph_call
  def call(self, inputs, training=None):
    features = _ordered_features(inputs, self.name)
    laterals = [lateral(x, training=training) for lateral, x in zip(self.laterals, features)]
    size = tf.shape(laterals[0])[1:3]
    joint = tf.concat([laterals[0]] + [
        tf.cast(tf.compat.v1.image.resize_bilinear(y, size, align_corners=True), y.dtype)
        for y in laterals[1:]], axis=-1)
    return tf.concat([branch(joint, training=training) for branch in self.branches], axis=-1)

  def get_config(self):
    config = super().get_config()
    config.update({
        "filters": self.filters,
        "dilation_rates": list(self.dilation_rates),
        "batch_norm_momentum": self.batch_norm_momentum,
        "batch_norm_epsilon": self.batch_norm_epsilon,
    })
    return config
