"""Gated-SCNN (Takikawa et al., ICCV 2019): gated convolution, shape stream, ASPP fusion.

Follows the released code (`nv-tlabs/GSCNN`, see other_seeds.md §4) with these
documented choices:

* The shape stream runs at the resolution of the backbone's `res2` endpoint (input/4)
  instead of full resolution, and starts from `res2` (projected by a 1×1 conv to
  `stem_filters` channels) instead of the WideResNet's first full-resolution block.
  Its boundary logits are then bilinearly upsampled to the input size.
* The image-gradient map fused with the shape-stream output is the Sobel magnitude of the
  raw image (`ops.image_gradient_magnitude`), not OpenCV's Canny on the normalized
  network input (no TF/XLA op; the official call on normalized input is a known quirk).
* Resizes use `tf.image.resize` (half-pixel centres, i.e. align_corners=False).

Gated-SCNN data flow (shapes for an input of H×W):

  res2 [b,H/4,W/4,*] ─1×1─ BasicBlock ─1×1→32─ GCL(·, res3 side) ─ BasicBlock ─1×1→16─
  GCL(·, res4 side) ─ BasicBlock ─1×1→8─ GCL(·, res5 side) ─1×1→1─ boundary logits
  fused_boundary = σ(1×1([σ(boundary logits), Sobel(image)]))  → ASPP edge branch.
"""
from typing import Sequence

import tensorflow as tf
import tf_keras

from deeplab_axial.layers import graph_code
from deeplab_axial.ops import boundaries

_SERIALIZABLE = tf_keras.saving.register_keras_serializable(package="deeplab_axial")
_ENDPOINTS = ("res2", "res3", "res4", "res5")


def _resize_to(tensor, reference):
  """Bilinear resize of `tensor` to the spatial size of `reference` (skipped if equal)."""
  source_size = tf.TensorShape(tensor.shape)[1:3]
  target_size = tf.TensorShape(reference.shape)[1:3]
  if (source_size.is_fully_defined() and target_size.is_fully_defined()
      and source_size == target_size):
    return tensor
  resized = tf.image.resize(tensor, tf.shape(reference)[1:3], method="bilinear")
  return tf.cast(resized, tensor.dtype)


class _BatchNormMixin:
  """Shared BatchNorm hyper-parameters (PyTorch defaults: momentum 0.1, eps 1e-5)."""

  def _batch_norm(self, name):
    return tf_keras.layers.BatchNormalization(
        momentum=self._batch_norm_momentum, epsilon=self._batch_norm_epsilon, name=name)

  def _batch_norm_config(self):
    return {"batch_norm_momentum": self._batch_norm_momentum,
            "batch_norm_epsilon": self._batch_norm_epsilon}


@_SERIALIZABLE
class GatedConv2D(_BatchNormMixin, tf_keras.layers.Layer):
  """Gated convolutional layer (GCL) of Gated-SCNN.

  With shape-stream features s and regular-stream features r:

    α = σ(BN(Conv1×1_{→1}(ReLU(Conv1×1_{→C+Cr}(BN([s ‖ r]))))))   [b, h, w, 1]
    output = Conv1×1_{→filters, no bias}(s ⊙ α + s)

  This is the paper's Eq. 1–2 with the official code's "normalized 1×1 conv" (BN, 1×1,
  ReLU, 1×1, BN). The gate scales s by a factor in (1, 2) per pixel; α → 0 gives
  Conv1×1(s).

  Inputs: a list `[s, r]`; s `[batch, height, width, C]`, r `[batch, h_r, w_r, Cr]`
  (Cr is 1 for the released model's side outputs). If r has a different spatial size it
  is bilinearly resized to s's size inside the layer.
  Output: `[batch, height, width, filters]`.
  """

  def __init__(self, filters: int, batch_norm_momentum: float = 0.9,
               batch_norm_epsilon: float = 1e-5, **kwargs):
    super().__init__(**kwargs)
    if isinstance(filters, bool) or not isinstance(filters, int) or filters <= 0:
      raise ValueError(f"filters must be a positive int, got {filters!r}")
    self.filters = filters
    self._batch_norm_momentum = batch_norm_momentum
    self._batch_norm_epsilon = batch_norm_epsilon

  def build(self, input_shape):
    if not isinstance(input_shape, (list, tuple)) or len(input_shape) != 2:
      raise ValueError(f"GatedConv2D expects inputs [shape_features, regular_features], "
                       f"got input shapes {input_shape}")
    shape_channels = input_shape[0][-1]
    regular_channels = input_shape[1][-1]
    if shape_channels is None or regular_channels is None:
      raise ValueError(f"GatedConv2D needs known channel dimensions, got {input_shape}")
    self._input_norm = self._batch_norm("input_norm")
    self._gate_hidden = tf_keras.layers.Conv2D(
        shape_channels + regular_channels, 1, activation="relu", name="gate_hidden")
    self._gate_logit = tf_keras.layers.Conv2D(1, 1, name="gate_logit")
    self._gate_norm = self._batch_norm("gate_norm")
    self._output_conv = tf_keras.layers.Conv2D(
        self.filters, 1, use_bias=False, kernel_initializer="glorot_normal",
        name="output_conv")
    super().build(input_shape)

  def gate(self, inputs, training=None):
    """The attention map α in (0, 1), float32 `[batch, height, width, 1]`."""
    shape_features, regular_features = inputs
    regular_features = _resize_to(regular_features, shape_features)
    joint = tf.concat([shape_features, tf.cast(regular_features, shape_features.dtype)], -1)
    hidden = self._gate_hidden(self._input_norm(joint, training=training))
    logits = self._gate_norm(self._gate_logit(hidden), training=training)
    return tf.sigmoid(tf.cast(logits, tf.float32))

  @graph_code.graph_call
  def call(self, inputs, training=None):
    shape_features = inputs[0]
    alpha = tf.cast(self.gate(inputs, training=training), shape_features.dtype)
    return self._output_conv(shape_features * alpha + shape_features)

  def compute_output_shape(self, input_shape):
    return tf.TensorShape(input_shape[0][:-1]).concatenate([self.filters])

  def get_config(self):
    config = super().get_config()
    config.update({"filters": self.filters, **self._batch_norm_config()})
    return config


@_SERIALIZABLE
class ShapeStreamResidualBlock(_BatchNormMixin, tf_keras.layers.Layer):
  """ResNet basic block: ReLU(x + BN(Conv3×3(ReLU(BN(Conv3×3(x)))))). Keeps the shape."""

  def __init__(self, batch_norm_momentum: float = 0.9, batch_norm_epsilon: float = 1e-5,
               **kwargs):
    super().__init__(**kwargs)
    self._batch_norm_momentum = batch_norm_momentum
    self._batch_norm_epsilon = batch_norm_epsilon

  def build(self, input_shape):
    channels = input_shape[-1]
    if channels is None:
      raise ValueError(f"ShapeStreamResidualBlock needs a known channel count, got "
                       f"{input_shape}")
    self._conv1 = tf_keras.layers.Conv2D(channels, 3, padding="same", use_bias=False,
                                         name="conv1")
    self._norm1 = self._batch_norm("norm1")
    self._conv2 = tf_keras.layers.Conv2D(channels, 3, padding="same", use_bias=False,
                                         name="conv2")
    self._norm2 = self._batch_norm("norm2")
    super().build(input_shape)

  @graph_code.graph_call
  def call(self, inputs, training=None):
    hidden = tf.nn.relu(self._norm1(self._conv1(inputs), training=training))
    return tf.nn.relu(inputs + self._norm2(self._conv2(hidden), training=training))

  def get_config(self):
    config = super().get_config()
    config.update(self._batch_norm_config())
    return config


@_SERIALIZABLE
class ShapeStream(_BatchNormMixin, tf_keras.layers.Layer):
  """Gated-SCNN shape stream with image-gradient fusion.

  Inputs: a dict with
    `image`: `[batch, H, W, 3]` raw image in [0, image_value_range] (for the gradient);
    `res2`..`res5`: backbone endpoints `[batch, h_i, w_i, C_i]`; the stream runs at
      res2's resolution (input/4 for ResNet-style backbones).

  Outputs: a dict with
    `boundary_logits`: float32 `[batch, H, W, 1]`, supervised by the boundary BCE;
    `fused_boundary`: float32 `[batch, H, W, 1]` in (0, 1): σ(Conv1×1([σ(boundary
      logits), gradient magnitude])), the edge input of `GatedScnnFusion`;
    `features`: `[batch, h_2, w_2, filters[-1]]`, the last gated features.

  One step per entry of `filters`, each fed by the next deeper endpoint (res3, res4, res5):
  residual block → 1×1 conv to `filters[i]` → `GatedConv2D` with the endpoint's 1×1 side
  output (one channel) as regular-stream input.
  """

  def __init__(self, filters: Sequence[int] = (32, 16, 8), stem_filters: int = 64,
               image_value_range: float = 255.0, batch_norm_momentum: float = 0.9,
               batch_norm_epsilon: float = 1e-5, **kwargs):
    super().__init__(**kwargs)
    filters = tuple(filters)
    if len(filters) != 3 or not all(isinstance(f, int) and f > 0 for f in filters):
      raise ValueError(f"filters must be 3 positive ints (one per endpoint res3..res5), "
                       f"got {filters!r}")
    if isinstance(stem_filters, bool) or not isinstance(stem_filters, int) or \
        stem_filters <= 0:
      raise ValueError(f"stem_filters must be a positive int, got {stem_filters!r}")
    self.filters = filters
    self.stem_filters = stem_filters
    self.image_value_range = image_value_range
    self._batch_norm_momentum = batch_norm_momentum
    self._batch_norm_epsilon = batch_norm_epsilon

  def build(self, input_shape):
    if not isinstance(input_shape, dict) or set(input_shape) != {"image", *_ENDPOINTS}:
      keys = sorted(input_shape) if isinstance(input_shape, dict) else input_shape
      raise ValueError(f"ShapeStream expects a dict with keys image, res2, res3, res4, "
                       f"res5; got {keys}")
    bn_config = self._batch_norm_config()
    self._stem = tf_keras.layers.Conv2D(self.stem_filters, 1, use_bias=False, name="stem")
    self._blocks, self._reductions, self._side_outputs, self._gates = [], [], [], []
    for index, (endpoint, filters) in enumerate(zip(_ENDPOINTS[1:], self.filters)):
      self._blocks.append(ShapeStreamResidualBlock(name=f"block{index + 1}", **bn_config))
      self._reductions.append(tf_keras.layers.Conv2D(filters, 1, name=f"reduce{index + 1}"))
      self._side_outputs.append(tf_keras.layers.Conv2D(1, 1, name=f"side_{endpoint}"))
      self._gates.append(GatedConv2D(filters, name=f"gate{index + 1}", **bn_config))
    self._boundary_conv = tf_keras.layers.Conv2D(1, 1, use_bias=False, name="boundary")
    self._fusion_conv = tf_keras.layers.Conv2D(1, 1, use_bias=False, name="fusion",
                                               dtype="float32")
    super().build(input_shape)

  @graph_code.graph_call
  def call(self, inputs, training=None):
    image = inputs["image"]
    features = self._stem(inputs["res2"])
    for block, reduction, side_output, gate, endpoint in zip(
        self._blocks, self._reductions, self._side_outputs, self._gates, _ENDPOINTS[1:]):
      features = reduction(block(features, training=training))
      side = _resize_to(side_output(inputs[endpoint]), features)
      features = gate([features, side], training=training)
    boundary_logits = tf.cast(self._boundary_conv(features), tf.float32)
    boundary_logits = tf.image.resize(boundary_logits, tf.shape(image)[1:3])
    gradient = boundaries.image_gradient_magnitude(image, self.image_value_range)
    fused = tf.sigmoid(self._fusion_conv(
        tf.concat([tf.sigmoid(boundary_logits), gradient], axis=-1)))
    return {"boundary_logits": boundary_logits, "fused_boundary": fused,
            "features": features}

  def get_config(self):
    config = super().get_config()
    config.update({"filters": list(self.filters), "stem_filters": self.stem_filters,
                   "image_value_range": self.image_value_range,
                   **self._batch_norm_config()})
    return config


@_SERIALIZABLE
class GatedScnnFusion(_BatchNormMixin, tf_keras.layers.Layer):
  """ASPP with the Gated-SCNN boundary branch.

  Six branches of `filters` channels, each Conv → BN → ReLU, concatenated in the released
  order: image pooling (global mean, 1×1, broadcast), boundary (the fused boundary map
  resized to the feature size, 1×1), 1×1, and three 3×3 convs with `atrous_rates`
  (12, 24, 36 in the paper at output stride 8; (6, 12, 18) suits output stride 16).

  Inputs: `[features, fused_boundary]`; features `[batch, h, w, C]` (the deepest
  endpoint), fused_boundary `[batch, H, W, 1]` (`ShapeStream` output, any size).
  Output: `[batch, h, w, 6·filters]`.
  """

  def __init__(self, filters: int = 256, atrous_rates: Sequence[int] = (6, 12, 18),
               batch_norm_momentum: float = 0.9, batch_norm_epsilon: float = 1e-5,
               **kwargs):
    super().__init__(**kwargs)
    if isinstance(filters, bool) or not isinstance(filters, int) or filters <= 0:
      raise ValueError(f"filters must be a positive int, got {filters!r}")
    atrous_rates = tuple(atrous_rates)
    if not atrous_rates or not all(isinstance(r, int) and r > 0 for r in atrous_rates):
      raise ValueError(f"atrous_rates must be positive ints, got {atrous_rates!r}")
    self.filters = filters
    self.atrous_rates = atrous_rates
    self._batch_norm_momentum = batch_norm_momentum
    self._batch_norm_epsilon = batch_norm_epsilon

  def build(self, input_shape):
    if not isinstance(input_shape, (list, tuple)) or len(input_shape) != 2:
      raise ValueError(f"GatedScnnFusion expects inputs [features, fused_boundary], got "
                       f"input shapes {input_shape}")

    # Branch order: image pooling, boundary, 1×1, atrous rates. Flat lists of layers:
    # Keras saving does not look into nested containers.
    specs = [("image_pool", 1, 1), ("boundary", 1, 1), ("conv1x1", 1, 1)] + [
        (f"atrous{rate}", 3, rate) for rate in self.atrous_rates]
    self._branch_convs = [
        tf_keras.layers.Conv2D(self.filters, kernel_size, padding="same",
                               dilation_rate=rate, use_bias=False, name=f"{name}_conv")
        for name, kernel_size, rate in specs]
    self._branch_norms = [self._batch_norm(f"{name}_norm") for name, _, _ in specs]
    super().build(input_shape)

  def _branch(self, index, inputs, training):
    conv, norm = self._branch_convs[index], self._branch_norms[index]
    return tf.nn.relu(norm(conv(inputs), training=training))

  @graph_code.graph_call
  def call(self, inputs, training=None):
    features, fused_boundary = inputs
    spatial = tf.shape(features)[1:3]
    pooled = self._branch(0, tf.reduce_mean(features, axis=[1, 2], keepdims=True), training)
    pooled = tf.broadcast_to(pooled, tf.concat([tf.shape(pooled)[:1], spatial,
                                                tf.shape(pooled)[3:]], 0))
    boundary = tf.image.resize(tf.cast(fused_boundary, tf.float32), spatial)
    boundary = self._branch(1, tf.cast(boundary, features.dtype), training)
    outputs = [pooled, boundary] + [self._branch(index, features, training)
                                    for index in range(2, len(self._branch_convs))]
    return tf.concat(outputs, axis=-1)

  def compute_output_shape(self, input_shape):
    channels = self.filters * (3 + len(self.atrous_rates))
    return tf.TensorShape(input_shape[0][:-1]).concatenate([channels])

  def get_config(self):
    config = super().get_config()
    config.update({"filters": self.filters, "atrous_rates": list(self.atrous_rates),
                   **self._batch_norm_config()})
    return config


@_SERIALIZABLE
class GatedScnnDecoder(_BatchNormMixin, tf_keras.layers.Layer):
  """DeepLabV3+-style decoder of Gated-SCNN.

  1×1 (no BN/activation) on the ASPP output, upsampled to the low-level feature size,
  concatenated with a 1×1 projection of the low-level features to `low_level_filters`,
  then two 3×3 Conv-BN-ReLU and a 1×1 classifier, upsampled to the image size.

  Inputs: `[aspp_features, low_level_features, image]`, the image only giving the output
  size. Output: float32 semantic logits `[batch, H, W, num_classes]`.
  """

  def __init__(self, num_classes: int, filters: int = 256, low_level_filters: int = 48,
               batch_norm_momentum: float = 0.9, batch_norm_epsilon: float = 1e-5,
               **kwargs):
    super().__init__(**kwargs)
    for name, value in (("num_classes", num_classes), ("filters", filters),
                        ("low_level_filters", low_level_filters)):
      if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    self.num_classes = num_classes
    self.filters = filters
    self.low_level_filters = low_level_filters
    self._batch_norm_momentum = batch_norm_momentum
    self._batch_norm_epsilon = batch_norm_epsilon

  def build(self, input_shape):
    self._aspp_projection = tf_keras.layers.Conv2D(self.filters, 1, use_bias=False,
                                                   name="aspp_projection")
    self._low_level_projection = tf_keras.layers.Conv2D(
        self.low_level_filters, 1, use_bias=False, name="low_level_projection")
    self._fuse_convs = [tf_keras.layers.Conv2D(self.filters, 3, padding="same",
                                               use_bias=False, name=f"fuse{i}_conv")
                        for i in (1, 2)]
    self._fuse_norms = [self._batch_norm(f"fuse{i}_norm") for i in (1, 2)]
    self._classifier = tf_keras.layers.Conv2D(self.num_classes, 1, use_bias=False,
                                              name="classifier")
    super().build(input_shape)

  @graph_code.graph_call
  def call(self, inputs, training=None):
    aspp_features, low_level, image = inputs
    low_level = self._low_level_projection(low_level)
    features = _resize_to(self._aspp_projection(aspp_features), low_level)
    features = tf.concat([features, low_level], axis=-1)
    for conv, norm in zip(self._fuse_convs, self._fuse_norms):
      features = tf.nn.relu(norm(conv(features), training=training))
    logits = tf.cast(self._classifier(features), tf.float32)
    return tf.image.resize(logits, tf.shape(image)[1:3])

  def get_config(self):
    config = super().get_config()
    config.update({"num_classes": self.num_classes, "filters": self.filters,
                   "low_level_filters": self.low_level_filters,
                   **self._batch_norm_config()})
    return config
