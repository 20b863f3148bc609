"""Panoptic-DeepLab meta-architecture: dual decoder and semantic/center/offset heads.

papers.md §5.1: a shared backbone feeds a semantic and an instance decoder. Each decoder
turns the last backbone feature into `aspp_channels` channels (an ASPP, or, for
Axial-DeepLab, one 1×1 conv + BN + ReLU), then twice: projects a low-level feature
(OS 8 `res3`, then OS 4 `res2`) with a 1×1 conv + BN + ReLU, upsamples the running feature
bilinearly to its size, concatenates and fuses with a 5×5 depthwise-separable conv. Heads
(a 5×5 depthwise-separable conv, then a 1×1 conv with bias) predict semantic logits, the
center heatmap (raw regression, no sigmoid) and center offsets (dy, dx) at OS 4; the model
resizes them to the input resolution (align corners) and rescales the offsets to input
pixels.
"""
import tensorflow as tf
import tf_keras

from deeplab_axial.layers import convolutions
from deeplab_axial.layers import graph_code
from deeplab_axial.models import catalogue
from deeplab_axial.models.backbones import resnet

_PACKAGE = "deeplab_axial"


def resize_align_corners(images, size):
  """Bilinear resize with aligned corners.

  Args:
    images: `[batch, height, width, channels]` float tensor.
    size: `[new_height, new_width]` (ints or an int32 tensor).

  Returns:
    `[batch, new_height, new_width, channels]` in the dtype of `images`. With
    align_corners, sizes k·s+1 map exactly onto each other (e.g. 17 → 65 at stride 4).
  """
  resized = tf.raw_ops.ResizeBilinear(images=images, size=tf.cast(size, tf.int32),
                                      align_corners=True, half_pixel_centers=False)
  # The op always returns float32.
  return tf.cast(resized, images.dtype)


@tf_keras.saving.register_keras_serializable(package=_PACKAGE)
class PanopticDeepLabDecoder(tf_keras.layers.Layer):
  """One Panoptic-DeepLab decoder branch (semantic or instance).

  Input: a dict of backbone endpoints holding `high_level_endpoint`
  (`[batch, h/OS, w/OS, c]`) and every name in `low_level_endpoints`.
  Output: `[batch, h4, w4, decoder_channels]` at the resolution of the last low-level
  endpoint (OS 4 for `res2`).

  Args:
    decoder_channels: channels of each fusion conv (256 semantic, 128 instance).
    low_level_projections: projection channels for each low-level endpoint, in the
      order of `low_level_endpoints` ((64, 32) semantic, (32, 16) instance).
    use_aspp: ASPP on the high-level feature; False replaces it with one 1×1 conv + BN +
      ReLU to `aspp_channels` (Axial-DeepLab, papers.md §2.5).
    aspp_channels: channels of the ASPP (or of its 1×1 replacement).
    atrous_rates: ASPP rates ((6, 12, 18) at output stride 16).
    aspp_dropout_rate: dropout after the ASPP projection.
    aspp_use_separable_conv: depthwise-separable atrous branches in the ASPP.
    fusion_kernel_size: depthwise kernel of the fusion convs (5).
    high_level_endpoint: name of the last backbone feature ("res5").
    low_level_endpoints: names of the low-level features, coarse to fine
      (("res3", "res2")).
    batch_norm_momentum, batch_norm_epsilon: BatchNormalization hyper-parameters.
  """

  def __init__(self, decoder_channels=256, low_level_projections=(64, 32), use_aspp=True,
               aspp_channels=256, atrous_rates=(6, 12, 18), aspp_dropout_rate=0.1,
               aspp_use_separable_conv=False, fusion_kernel_size=5,
               high_level_endpoint="res5", low_level_endpoints=("res3", "res2"),
               batch_norm_momentum=0.99, batch_norm_epsilon=1e-5, **kwargs):
    super().__init__(**kwargs)
    low_level_projections = tuple(low_level_projections)
    low_level_endpoints = tuple(low_level_endpoints)
    if len(low_level_projections) != len(low_level_endpoints):
      raise ValueError(
          f"{self.name}: `low_level_projections` {low_level_projections} needs one entry per "
          f"low-level endpoint {low_level_endpoints}.")
    self.decoder_channels = decoder_channels
    self.low_level_projections = low_level_projections
    self.use_aspp = use_aspp
    self.aspp_channels = aspp_channels
    self.atrous_rates = tuple(atrous_rates)
    self.aspp_dropout_rate = aspp_dropout_rate
    self.aspp_use_separable_conv = aspp_use_separable_conv
    self.fusion_kernel_size = fusion_kernel_size
    self.high_level_endpoint = high_level_endpoint
    self.low_level_endpoints = low_level_endpoints
    self.batch_norm_momentum = batch_norm_momentum
    self.batch_norm_epsilon = batch_norm_epsilon
    bn_args = {"batch_norm_momentum": batch_norm_momentum,
               "batch_norm_epsilon": batch_norm_epsilon}
    if use_aspp:
      self.aspp = convolutions.ASPP(aspp_channels, self.atrous_rates,
                                    dropout_rate=aspp_dropout_rate,
                                    use_separable_conv=aspp_use_separable_conv, name="aspp",
                                    **bn_args)
    else:
      self.aspp = convolutions.ConvBNReLU(aspp_channels, 1, name="aspp_1x1", **bn_args)
    self.projections = [
        convolutions.ConvBNReLU(channels, 1, name=f"{endpoint}_projection", **bn_args)
        for endpoint, channels in zip(low_level_endpoints, low_level_projections)]
    self.fusions = [
        convolutions.SeparableConvBNReLU(decoder_channels, fusion_kernel_size,
                                         name=f"{endpoint}_fusion", **bn_args)
        for endpoint in low_level_endpoints]

  def _check_features(self, features):
    if not isinstance(features, dict):
      raise ValueError(f"{self.name}: expects a dict of backbone endpoints, got "
                       f"{type(features).__name__}.")
    missing = [name for name in (self.high_level_endpoint, *self.low_level_endpoints)
               if name not in features]
    if missing:
      raise ValueError(f"{self.name}: backbone endpoints {missing} are missing; the backbone "
                       f"returned {sorted(features)}.")

  def build(self, input_shape):
    self._check_features(input_shape)
    high = tf.TensorShape(input_shape[self.high_level_endpoint])
    self.aspp.build(high)
    channels = self.aspp_channels
    for endpoint, projection, fusion in zip(self.low_level_endpoints, self.projections,
                                            self.fusions):
      low = tf.TensorShape(input_shape[endpoint])
      projection.build(low)
      fusion.build(low[:-1].concatenate([channels + projection.filters]))
      channels = self.decoder_channels
    super().build(input_shape)

  @graph_code.graph_call
  def call(self, features, training=None):
    self._check_features(features)
    x = self.aspp(features[self.high_level_endpoint], training=training)
    for endpoint, projection, fusion in zip(self.low_level_endpoints, self.projections,
                                            self.fusions):
      low = projection(features[endpoint], training=training)
      x = resize_align_corners(x, tf.shape(low)[1:3])
      x = fusion(tf.concat([x, low], axis=-1), training=training)
    return x

  def get_config(self):
    config = super().get_config()
    config.update({
        "decoder_channels": self.decoder_channels,
        "low_level_projections": list(self.low_level_projections),
        "use_aspp": self.use_aspp,
        "aspp_channels": self.aspp_channels,
        "atrous_rates": list(self.atrous_rates),
        "aspp_dropout_rate": self.aspp_dropout_rate,
        "aspp_use_separable_conv": self.aspp_use_separable_conv,
        "fusion_kernel_size": self.fusion_kernel_size,
        "high_level_endpoint": self.high_level_endpoint,
        "low_level_endpoints": list(self.low_level_endpoints),
        "batch_norm_momentum": self.batch_norm_momentum,
        "batch_norm_epsilon": self.batch_norm_epsilon,
    })
    return config


@tf_keras.saving.register_keras_serializable(package=_PACKAGE)
class PanopticHead(tf_keras.layers.Layer):
  """Prediction head: 5×5 depthwise-separable conv + BN + ReLU, then 1×1 conv with bias.

  Input `[batch, h, w, in_channels]` → output `[batch, h, w, output_channels]` in
  float32 (the final conv runs in float32 so mixed precision is safe).

  Args:
    filters: channels of the separable conv (256 semantic, 32 center/offset).
    output_channels: classes, 1 (center heatmap) or 2 (offsets).
    kernel_size: depthwise kernel size.
    batch_norm_momentum, batch_norm_epsilon: BatchNormalization hyper-parameters.
  """

  def __init__(self, filters, output_channels, kernel_size=5, batch_norm_momentum=0.99,
               batch_norm_epsilon=1e-5, **kwargs):
    super().__init__(**kwargs)
    self.filters = filters
    self.output_channels = output_channels
    self.kernel_size = kernel_size
    self.batch_norm_momentum = batch_norm_momentum
    self.batch_norm_epsilon = batch_norm_epsilon
    self.separable = convolutions.SeparableConvBNReLU(
        filters, kernel_size, batch_norm_momentum=batch_norm_momentum,
        batch_norm_epsilon=batch_norm_epsilon, name="separable")
    self.prediction = tf_keras.layers.Conv2D(
        output_channels, 1, use_bias=True,
        kernel_initializer=tf_keras.initializers.TruncatedNormal(stddev=0.01),
        dtype="float32", name="prediction")

  def build(self, input_shape):
    input_shape = tf.TensorShape(input_shape)
    self.separable.build(input_shape)
    self.prediction.build(input_shape[:-1].concatenate([self.filters]))
    super().build(input_shape)

  @graph_code.graph_call
  def call(self, inputs, training=None):
    return self.prediction(self.separable(inputs, training=training))

  def get_config(self):
    config = super().get_config()
    config.update({
        "filters": self.filters,
        "output_channels": self.output_channels,
        "kernel_size": self.kernel_size,
        "batch_norm_momentum": self.batch_norm_momentum,
        "batch_norm_epsilon": self.batch_norm_epsilon,
    })
    return config


@tf_keras.saving.register_keras_serializable(package=_PACKAGE)
class ResizeToReference(tf_keras.layers.Layer):
  """Resizes a prediction to the spatial size of a reference tensor (align corners).

  Inputs `[prediction [batch, h, w, c], reference [batch, H, W, ...]]` → float32
  `[batch, H, W, c]`. With `rescale_offsets=True` the prediction holds (dy, dx) offsets
  in its own pixel units; they are multiplied by (H − 1)/(h − 1) and (W − 1)/(w − 1) so
  they are in reference pixels (papers.md §5.1).
  """

  def __init__(self, rescale_offsets=False, **kwargs):
    kwargs.setdefault("dtype", "float32")
    super().__init__(**kwargs)
    self.rescale_offsets = rescale_offsets

  @graph_code.graph_call
  def call(self, inputs):
    prediction, reference = inputs
    prediction = tf.cast(prediction, self.compute_dtype)
    source_size = tf.shape(prediction)[1:3]
    target_size = tf.shape(reference)[1:3]
    resized = resize_align_corners(prediction, target_size)
    if not self.rescale_offsets:
      return resized
    # A 1-pixel axis has no extent to rescale; keep its offsets unscaled.
    scale = (tf.cast(tf.maximum(target_size - 1, 1), resized.dtype)
             / tf.cast(tf.maximum(source_size - 1, 1), resized.dtype))
    return resized * scale

  def get_config(self):
    config = super().get_config()
    config["rescale_offsets"] = self.rescale_offsets
    return config


def backbone_endpoints(backbone, input_shape=None, normalize_input=True):
  """The functional `images` input and `backbone`'s endpoints on it.

  Args:
    backbone: a `tf_keras.Model` returning a dict of endpoints.
    input_shape: `(height, width, 3)`; None accepts any size.
    normalize_input: map pixels from [0, 255] to [-1, 1] (pixel / 127.5 − 1) first.

  Returns:
    `(images, endpoints)`: the `tf_keras.Input` `[b, h, w, 3]` and the endpoint dict.

  Raises:
    ValueError: a bad `input_shape`, or a backbone that does not return a dict.
  """
  input_shape = (None, None, 3) if input_shape is None else tuple(input_shape)
  if len(input_shape) != 3 or input_shape[-1] != 3:
    raise ValueError(f"`input_shape` must be (height, width, 3), got {input_shape!r}.")
  images = tf_keras.Input(shape=input_shape, name="images")
  x = images
  if normalize_input:
    x = tf_keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name="normalize")(x)
  endpoints = graph_code.call_nested(backbone, x)
  if not isinstance(endpoints, dict):
    raise ValueError(f"`backbone` {backbone.name!r} must return a dict of endpoints, got "
                     f"{type(endpoints).__name__}; build it with num_classes=None.")
  return images, endpoints


def panoptic_deeplab(backbone, num_classes, *, input_shape=None, use_aspp=True,
                     aspp_channels=256, atrous_rates=(6, 12, 18), aspp_dropout_rate=0.1,
                     aspp_use_separable_conv=False, semantic_decoder_channels=256,
                     instance_decoder_channels=128, semantic_low_level_projections=(64, 32),
                     instance_low_level_projections=(32, 16), semantic_head_channels=256,
                     center_head_channels=32, offset_head_channels=32,
                     high_level_endpoint="res5", low_level_endpoints=("res3", "res2"),
                     normalize_input=True, batch_norm_momentum=0.99,
                     batch_norm_epsilon=1e-5, name="panoptic_deeplab"):
  """Builds Panoptic-DeepLab around `backbone`.

  Args:
    backbone: a `tf_keras.Model` mapping images `[b, h, w, 3]` to a dict of endpoints
      holding `high_level_endpoint` and `low_level_endpoints` (OS 8 and OS 4 features).
    num_classes: semantic classes.
    input_shape: `(height, width, 3)`; None (default) accepts any size the backbone does.
    use_aspp: ASPP in both decoders (True for ResNet); False uses a 1×1 conv + BN + ReLU
      instead (Axial-DeepLab).
    aspp_channels, atrous_rates, aspp_dropout_rate, aspp_use_separable_conv: ASPP options.
    semantic_decoder_channels, instance_decoder_channels: decoder widths (256, 128).
    semantic_low_level_projections, instance_low_level_projections: projection widths
      for `low_level_endpoints` ((64, 32), (32, 16)).
    semantic_head_channels, center_head_channels, offset_head_channels: head widths.
    high_level_endpoint, low_level_endpoints: backbone endpoint names.
    normalize_input: map pixels from [0, 255] to [-1, 1] (pixel / 127.5 − 1) first.
    batch_norm_momentum, batch_norm_epsilon: BatchNormalization hyper-parameters.
    name: model name.

  Returns:
    A `tf_keras.Model` on float32 images `[b, h, w, 3]` in [0, 255] returning a dict of
    float32 tensors at input resolution: `semantic_logits [b, h, w, num_classes]`,
    `center_heatmap [b, h, w, 1]`, `center_offset [b, h, w, 2]` ((dy, dx) in pixels).
  """
  if not isinstance(backbone, tf_keras.Model):
    raise ValueError(f"`backbone` must be a tf_keras.Model, got {type(backbone).__name__}.")
  if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
    raise ValueError(f"`num_classes` must be a positive int, got {num_classes!r}.")
  images, features = backbone_endpoints(backbone, input_shape, normalize_input)

  common = {"use_aspp": use_aspp, "aspp_channels": aspp_channels,
            "atrous_rates": atrous_rates, "aspp_dropout_rate": aspp_dropout_rate,
            "aspp_use_separable_conv": aspp_use_separable_conv,
            "high_level_endpoint": high_level_endpoint,
            "low_level_endpoints": low_level_endpoints,
            "batch_norm_momentum": batch_norm_momentum,
            "batch_norm_epsilon": batch_norm_epsilon}
  bn_args = {"batch_norm_momentum": batch_norm_momentum,
             "batch_norm_epsilon": batch_norm_epsilon}
  semantic = PanopticDeepLabDecoder(semantic_decoder_channels, semantic_low_level_projections,
                                    name="semantic_decoder", **common)(features)
  instance = PanopticDeepLabDecoder(instance_decoder_channels, instance_low_level_projections,
                                    name="instance_decoder", **common)(features)
  semantic = PanopticHead(semantic_head_channels, num_classes, name="semantic_head",
                          **bn_args)(semantic)
  center = PanopticHead(center_head_channels, 1, name="center_head", **bn_args)(instance)
  offset = PanopticHead(offset_head_channels, 2, name="offset_head", **bn_args)(instance)
  outputs = {
      "semantic_logits": ResizeToReference(name="semantic_logits")([semantic, images]),
      "center_heatmap": ResizeToReference(name="center_heatmap")([center, images]),
      "center_offset": ResizeToReference(rescale_offsets=True,
                                         name="center_offset")([offset, images]),
  }
  return tf_keras.Model(images, outputs, name=name)


def panoptic_deeplab_resnet50(num_classes, input_shape=None, output_stride=16, stem="conv",
                              aspp_use_separable_conv=True, batch_norm_momentum=None,
                              batch_norm_epsilon=None, **kwargs):
  """Panoptic-DeepLab with a ResNet-50 backbone and ASPP (the paper's baseline).

  Atrous rates scale with the output stride: (6, 12, 18) at 16, (3, 6, 9) at 32,
  (12, 24, 36) at 8. The ASPP's atrous branches are depthwise-separable by default: with
  them the model has 29.9M parameters on Cityscapes (19 classes), matching the 30.0M of
  AD Tab. 6 "ResNet-50 (their impl.) + ASPP"; regular 3×3 atrous convs (DeepLab2) would
  give 55.0M.

  Args:
    num_classes: semantic classes.
    input_shape: `(height, width, 3)` or None for any size.
    output_stride: 8, 16 or 32 (backbone output stride).
    stem: "conv" (7×7) or "inception" (three 3×3 convs).
    aspp_use_separable_conv: see above.
    batch_norm_momentum, batch_norm_epsilon: every BatchNormalization (backbone and
      heads); None = the catalogue preset's (DeepLab2's 0.99, 1e-3).
    **kwargs: further `panoptic_deeplab` arguments.
  """
  if output_stride not in (8, 16, 32):
    raise ValueError(f"`output_stride` must be 8, 16 or 32, got {output_stride!r}.")
  bn_args = catalogue.batch_norm("panoptic_deeplab_resnet50", batch_norm_momentum,
                                 batch_norm_epsilon)
  backbone = resnet.resnet50(input_shape=input_shape, output_stride=output_stride, stem=stem,
                             **bn_args)
  rates = tuple(rate * 16 // output_stride for rate in (6, 12, 18))
  kwargs.setdefault("atrous_rates", rates)
  kwargs.setdefault("name", "panoptic_deeplab_resnet50")
  return panoptic_deeplab(backbone, num_classes, input_shape=input_shape,
                          aspp_use_separable_conv=aspp_use_separable_conv, **bn_args,
                          **kwargs)
