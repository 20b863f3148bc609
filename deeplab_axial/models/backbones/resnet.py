"""ResNet-50/101 baselines (torchvision-style v1.5 bottlenecks) with the Axial-ResNet API.

`resnet50(num_classes=None)` returns a `tf_keras.Model` whose output is the dict of
endpoints `res2..res5`; with `num_classes` it returns classification logits. Like the
official PyTorch models, the backbone applies no input normalization.

Layer names (used by weight converters): stem `stem` (a `ConvBNReLU` 7×7/2 or an
`InceptionStem`), max-pool `stem_pool`, blocks `res{stage}_block{index}` with stage 2..5
and index from 1, each holding `conv1`, `conv2`, `conv3` and, in the first block of a
stage, `shortcut` (all `ConvBNReLU`, each with `.conv` and `.bn`); classifier `logits`.
"""
import tensorflow as tf
import tf_keras

from deeplab_axial.layers import convolutions
from deeplab_axial.layers import graph_code
from deeplab_axial.models import catalogue

_STAGE_WIDTHS = (64, 128, 256, 512)
_EXPANSION = 4
_STEMS = ("conv", "inception")


@tf_keras.saving.register_keras_serializable(package="deeplab_axial")
class BottleneckBlock(tf_keras.layers.Layer):
  """ResNet v1.5 bottleneck: 1×1 → 3×3 (stride, dilation) → 1×1 (×expansion), + shortcut.

  Input `[batch, height, width, in_channels]` → output
  `[batch, ceil(height / strides), ceil(width / strides), filters * expansion]`.

  Args:
    filters: bottleneck width (channels of the 1×1 and 3×3 convs).
    strides: stride of the 3×3 conv and of the projection shortcut.
    dilation_rate: atrous rate of the 3×3 conv.
    expansion: output channels = filters * expansion.
    use_projection: 1×1 conv + BN shortcut instead of identity (needed when the stride
      or the channel count changes).
    zero_init_residual: initialize the last BN scale to 0 so the block starts as identity.
    batch_norm_momentum, batch_norm_epsilon: BatchNormalization hyper-parameters.
  """

  def __init__(self, filters, strides=1, dilation_rate=1, expansion=_EXPANSION,
               use_projection=False, zero_init_residual=False, batch_norm_momentum=0.99,
               batch_norm_epsilon=1e-5, **kwargs):
    super().__init__(**kwargs)
    self.filters = filters
    self.strides = strides
    self.dilation_rate = dilation_rate
    self.expansion = expansion
    self.use_projection = use_projection
    self.zero_init_residual = zero_init_residual
    self.batch_norm_momentum = batch_norm_momentum
    self.batch_norm_epsilon = batch_norm_epsilon
    bn_args = {"batch_norm_momentum": batch_norm_momentum,
               "batch_norm_epsilon": batch_norm_epsilon}
    self.conv1 = convolutions.ConvBNReLU(filters, 1, name="conv1", **bn_args)
    self.conv2 = convolutions.ConvBNReLU(filters, 3, strides=strides,
                                         dilation_rate=dilation_rate, name="conv2", **bn_args)
    self.conv3 = convolutions.ConvBNReLU(
        filters * expansion, 1, use_relu=False,
        gamma_initializer="zeros" if zero_init_residual else "ones", name="conv3", **bn_args)
    self.shortcut = (convolutions.ConvBNReLU(filters * expansion, 1, strides=strides,
                                             use_relu=False, name="shortcut", **bn_args)
                     if use_projection else None)

  def build(self, input_shape):
    input_shape = tf.TensorShape(input_shape)
    if self.shortcut is None and input_shape[-1] != self.filters * self.expansion:
      raise ValueError(
          f"{self.name}: identity shortcut needs {self.filters * self.expansion} input "
          f"channels, got {input_shape[-1]}; set use_projection=True.")
    self.conv1.build(input_shape)
    inner = input_shape[:-1].concatenate([self.filters])
    self.conv2.build(inner)
    self.conv3.build(self.conv2.compute_output_shape(inner))
    if self.shortcut is not None:
      self.shortcut.build(input_shape)
    super().build(input_shape)

  @graph_code.graph_call
  def call(self, inputs, training=None):
    x = self.conv1(inputs, training=training)
    x = self.conv2(x, training=training)
    x = self.conv3(x, training=training)
    shortcut = inputs if self.shortcut is None else self.shortcut(inputs, training=training)
    return tf.nn.relu(x + shortcut)

  def compute_output_shape(self, input_shape):
    shape = self.conv2.compute_output_shape(tf.TensorShape(input_shape))
    return shape[:-1].concatenate([self.filters * self.expansion])

  def get_config(self):
    config = super().get_config()
    config.update({
        "filters": self.filters,
        "strides": self.strides,
        "dilation_rate": self.dilation_rate,
        "expansion": self.expansion,
        "use_projection": self.use_projection,
        "zero_init_residual": self.zero_init_residual,
        "batch_norm_momentum": self.batch_norm_momentum,
        "batch_norm_epsilon": self.batch_norm_epsilon,
    })
    return config


def _stage_schedule(output_stride):
  """Per stage (2..5): (stride, dilation of the first block, dilation of the others).

  Stages whose stride would exceed `output_stride` keep resolution and dilate instead;
  as in torchvision's `replace_stride_with_dilation`, the first block of such a stage
  still uses the previous dilation.
  """
  schedule = []
  current_stride, dilation = 4, 1
  for stage_stride in (1, 2, 2, 2):
    previous_dilation = dilation
    if current_stride * stage_stride > output_stride:
      dilation *= stage_stride
      stage_stride = 1
    current_stride *= stage_stride
    schedule.append((stage_stride, previous_dilation, dilation))
  return schedule


def resnet(block_counts, num_classes=None, input_shape=None, output_stride=32, stem="conv",
           zero_init_residual=False, batch_norm_momentum=0.99, batch_norm_epsilon=1e-5,
           name="resnet"):
  """Builds a bottleneck ResNet (v1.5: the stride sits on the 3×3 conv).

  Args:
    block_counts: blocks in stages 2..5, e.g. (3, 4, 6, 3) for ResNet-50.
    num_classes: None returns the endpoints dict; an int adds global average pooling and a
      dense classifier returning float32 logits `[batch, num_classes]`.
    input_shape: `(height, width, 3)`; None (default) or None entries accept any size.
    output_stride: 32, 16 or 8 — stages beyond it keep resolution and use dilation.
    stem: "conv" (7×7/2 conv, 64 ch) or "inception" (Panoptic-DeepLab's 3-conv stem,
      128 ch); either is followed by a 3×3/2 max-pool.
    zero_init_residual: start every block as identity (last BN scale 0).
    batch_norm_momentum, batch_norm_epsilon: BatchNormalization hyper-parameters
      (epsilon 1e-5 matches PyTorch).
    name: model name.

  Returns:
    A `tf_keras.Model` on images `[batch, height, width, 3]` (no normalization). Without
    classes its output is a dict: `res2 [b, h/4, w/4, 256]`, `res3 [b, h/8, w/8, 512]`,
    `res4 [b, h/16, w/16, 1024]`, `res5 [b, h/32, w/32, 2048]` with strides capped at
    `output_stride` (sizes round up: `ceil`).
  """
  if output_stride not in (8, 16, 32):
    raise ValueError(f"`output_stride` must be 8, 16 or 32, got {output_stride!r}.")
  if stem not in _STEMS:
    raise ValueError(f"`stem` must be one of {_STEMS}, got {stem!r}.")
  if num_classes is not None and (isinstance(num_classes, bool)
                                  or not isinstance(num_classes, int) or num_classes < 1):
    raise ValueError(f"`num_classes` must be None or a positive int, got {num_classes!r}.")
  input_shape = (None, None, 3) if input_shape is None else tuple(input_shape)
  if len(input_shape) != 3 or input_shape[-1] != 3:
    raise ValueError(f"`input_shape` must be (height, width, 3), got {input_shape!r}.")

  bn_args = {"batch_norm_momentum": batch_norm_momentum,
             "batch_norm_epsilon": batch_norm_epsilon}
  images = tf_keras.Input(shape=input_shape, name="images")
  if stem == "conv":
    x = convolutions.ConvBNReLU(64, 7, strides=2, name="stem", **bn_args)(images)
  else:
    x = convolutions.InceptionStem(name="stem", **bn_args)(images)
  x = stem_max_pool(x)

  endpoints = {}
  schedule = _stage_schedule(output_stride)
  for stage, (width, blocks, (stride, first_dilation, dilation)) in enumerate(
      zip(_STAGE_WIDTHS, block_counts, schedule), start=2):
    for index in range(blocks):
      x = BottleneckBlock(
          width, strides=stride if index == 0 else 1,
          dilation_rate=first_dilation if index == 0 else dilation,
          use_projection=index == 0, zero_init_residual=zero_init_residual,
          name=f"res{stage}_block{index + 1}", **bn_args)(x)
    endpoints[f"res{stage}"] = x

  return endpoints_or_classifier(images, endpoints, num_classes, name)


def stem_max_pool(x):
  """The stride-2 3x3 max pool after a ResNet stem (layers `stem_pool_pad`, `stem_pool`).

  The input is post-ReLU (>= 0), so zero padding is equivalent to PyTorch's -inf padding.
  """
  x = tf_keras.layers.ZeroPadding2D(1, name="stem_pool_pad")(x)
  return tf_keras.layers.MaxPool2D(3, strides=2, padding="valid", name="stem_pool")(x)


def endpoints_or_classifier(images, endpoints, num_classes, name):
  """The backbone model on `images`: its `endpoints` dict when `num_classes` is None, else
  global pooling of `res5` and float32 logits `[batch, num_classes]` (layers
  `global_pool`, `logits`)."""
  if num_classes is None:
    return tf_keras.Model(images, endpoints, name=name)
  x = tf_keras.layers.GlobalAveragePooling2D(name="global_pool")(endpoints["res5"])
  logits = tf_keras.layers.Dense(num_classes, dtype="float32", name="logits")(x)
  return tf_keras.Model(images, logits, name=name)


def resnet_preset(preset_name, num_classes=None, input_shape=None, output_stride=32, *,
                  batch_norm_momentum=None, batch_norm_epsilon=None, **kwargs):
  """The ResNet preset `preset_name` of `deeplab_axial.models.catalogue` (blocks and
  BatchNorm defaults: DeepLab2's momentum 0.99, epsilon 1e-3). See `resnet`."""
  preset = catalogue.backbone(preset_name)
  if preset.family != "resnet":
    raise ValueError(f"{preset_name!r} is not a ResNet preset; expected one of "
                     f"{', '.join(catalogue.names('resnet'))}")
  return resnet(preset.block_counts, num_classes=num_classes, input_shape=input_shape,
                output_stride=output_stride, name=kwargs.pop("name", preset_name),
                **catalogue.batch_norm(preset_name, batch_norm_momentum, batch_norm_epsilon),
                **kwargs)


def resnet50(num_classes=None, input_shape=None, output_stride=32, **kwargs):
  """ResNet-50: 25,557,032 trainable parameters with 1000 classes. See `resnet_preset`."""
  return resnet_preset("resnet50", num_classes, input_shape, output_stride, **kwargs)


def resnet101(num_classes=None, input_shape=None, output_stride=32, **kwargs):
  """ResNet-101: 44,549,160 trainable parameters with 1000 classes. See `resnet_preset`."""
  return resnet_preset("resnet101", num_classes, input_shape, output_stride, **kwargs)
