"""Semantic-segmentation heads built on the context modules: DANet, ISA, JPU + ASPP.

Each head builder reads the channel counts from a backbone's endpoints and returns a
`tf_keras.Model` that maps a dict of endpoints (`res2..res5`, only the ones it uses) to a
dict of logits at the resolution of the head's input feature:

  * `danet_head`: dual attention on `res5` of a dilated (OS 8) backbone;
  * `isa_head`: interlaced sparse self-attention on `res5` of a dilated (OS 8) backbone;
  * `jpu_aspp_head`: FastFCN JPU on `res3, res4, res5` of a plain (OS 32) backbone, which
    rebuilds OS-8 features, then an ASPP (DeepLabV3) classifier.

`segmentation_model(backbone, head)` wires image → backbone → head and resizes every
logits tensor to the input size:

    backbone = resnet.resnet50(output_stride=32)
    head = context_heads.jpu_aspp_head(backbone.output, num_classes=19)
    model = context_heads.segmentation_model(backbone, head)
    model(images)["semantic_logits"]  # [batch, height, width, 19], float32
"""
import tf_keras

from deeplab_axial.layers import convolutions
from deeplab_axial.layers import danet
from deeplab_axial.layers import isa
from deeplab_axial.layers import jpu
from deeplab_axial.models.meta.panoptic_deeplab import ResizeToReference
from deeplab_axial.models.meta.panoptic_deeplab import backbone_endpoints


def _check_num_classes(num_classes):
  if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
    raise ValueError(f"`num_classes` must be a positive integer, got {num_classes!r}.")


def _endpoint_inputs(endpoints, keys):
  """Keras inputs `[batch, None, None, channels]` for `keys`, channels from `endpoints`.

  `endpoints` maps names to anything with a shape (Keras tensors, tensors) or to shapes.
  """
  if not isinstance(endpoints, dict):
    raise ValueError(f"`endpoints` must be a dict of backbone endpoints (e.g. a backbone "
                     f"model's `output`), got {type(endpoints).__name__}.")
  inputs = {}
  for key in keys:
    if key not in endpoints:
      raise ValueError(f"`endpoints` has no {key!r}; available: {sorted(endpoints)}.")
    shape = getattr(endpoints[key], "shape", endpoints[key])
    channels = tuple(shape)[-1]
    if channels is None:
      raise ValueError(f"endpoint {key!r} must have known channels, got shape {shape}.")
    inputs[key] = tf_keras.Input(shape=(None, None, int(channels)), name=key)
  return inputs


def _classifier(num_classes, name):
  return tf_keras.layers.Conv2D(num_classes, 1, name=name)


def danet_head(endpoints, num_classes, *, feature_key="res5", inter_channels=None,
               dropout=0.1, reduction=8, channel_attention_mode="official",
               batch_norm_momentum=0.99, batch_norm_epsilon=1e-5, name="danet_head"):
  """DANet head (`layers.DualAttentionHead`) on one endpoint.

  Args:
    endpoints: dict of backbone endpoints (tensors or shapes); only channels are read.
    num_classes: Number of classes.
    feature_key: Endpoint to attend over (DANet: C5 of a dilated OS-8 ResNet).
    inter_channels: Branch width; default channels // 4 (512 for ResNet-50).
    dropout: Spatial dropout before each classifier.
    reduction: PAM query/key reduction (8).
    channel_attention_mode: "official" (DANet code) or "paper"; see `ChannelAttention`.
    batch_norm_momentum, batch_norm_epsilon: BatchNormalization hyper-parameters.
    name: Model name.

  Returns:
    A `tf_keras.Model` on `{feature_key: [b, h, w, c]}` returning a dict of
    `[b, h, w, num_classes]`: `semantic_logits` (fused), `position_logits` and
    `channel_logits` (the per-branch auxiliary outputs DANet also supervises).
  """
  _check_num_classes(num_classes)
  inputs = _endpoint_inputs(endpoints, [feature_key])
  outputs = danet.DualAttentionHead(
      num_classes, inter_channels=inter_channels, dropout=dropout, reduction=reduction,
      channel_attention_mode=channel_attention_mode, batch_norm_momentum=batch_norm_momentum,
      batch_norm_epsilon=batch_norm_epsilon, name="dual_attention")(inputs[feature_key])
  return tf_keras.Model(inputs, {
      "semantic_logits": outputs["logits"],
      "position_logits": outputs["position_logits"],
      "channel_logits": outputs["channel_logits"],
  }, name=name)


def isa_head(endpoints, num_classes, *, feature_key="res5", channels=512, partition=(8, 8),
             key_channels=256, dropout=0.1, batch_norm_momentum=0.99,
             batch_norm_epsilon=1e-5, name="isa_head"):
  """ISANet head: 3×3 conv-BN-ReLU → ISA → concat with its input → 1×1 conv-BN-ReLU →
  spatial dropout → 1×1 classifier (the concat is the ISA module's residual path).

  Args:
    endpoints: dict of backbone endpoints (tensors or shapes); only channels are read.
    num_classes: Number of classes.
    feature_key: Input endpoint (ISANet: C5 of a dilated OS-8 ResNet).
    channels: Width of the reduction conv, the ISA values/outputs and the fusion conv.
    partition: ISA block size (P_h, P_w).
    key_channels: ISA query/key width.
    dropout: Spatial dropout before the classifier.
    batch_norm_momentum, batch_norm_epsilon: BatchNormalization hyper-parameters.
    name: Model name.

  Returns:
    A `tf_keras.Model` on `{feature_key: [b, h, w, c]}` returning
    `{"semantic_logits": [b, h, w, num_classes]}`.
  """
  _check_num_classes(num_classes)
  bn_args = {"batch_norm_momentum": batch_norm_momentum,
             "batch_norm_epsilon": batch_norm_epsilon}
  inputs = _endpoint_inputs(endpoints, [feature_key])
  x = convolutions.ConvBNReLU(channels, 3, name="reduce", **bn_args)(inputs[feature_key])
  context = isa.InterlacedSparseSelfAttention(partition, key_channels=key_channels,
                                              name="isa", **bn_args)(x)
  x = tf_keras.layers.Concatenate(name="isa_concat")([x, context])
  x = convolutions.ConvBNReLU(channels, 1, name="fuse", **bn_args)(x)
  x = tf_keras.layers.SpatialDropout2D(dropout, name="dropout")(x)
  return tf_keras.Model(inputs, {"semantic_logits": _classifier(num_classes, "logits")(x)},
                        name=name)


def jpu_aspp_head(endpoints, num_classes, *, feature_keys=("res3", "res4", "res5"),
                  jpu_filters=512, dilation_rates=(1, 2, 4, 8), aspp_channels=256,
                  atrous_rates=(12, 24, 36), dropout=0.1, batch_norm_momentum=0.99,
                  batch_norm_epsilon=1e-5, name="jpu_aspp_head"):
  """FastFCN: JPU on the OS-8/16/32 endpoints of a plain backbone, then ASPP + classifier.

  Args:
    endpoints: dict of backbone endpoints (tensors or shapes); only channels are read.
    num_classes: Number of classes.
    feature_keys: The OS-8, OS-16 and OS-32 endpoints.
    jpu_filters: JPU width; its output has `len(dilation_rates) * jpu_filters` channels.
    dilation_rates: JPU branch rates.
    aspp_channels: ASPP width.
    atrous_rates: ASPP rates; (12, 24, 36) is DeepLabV3's setting at output stride 8.
    dropout: ASPP dropout (before the classifier).
    batch_norm_momentum, batch_norm_epsilon: BatchNormalization hyper-parameters.
    name: Model name.

  Returns:
    A `tf_keras.Model` on `{key: feature}` for `feature_keys` returning
    `{"semantic_logits": [b, h8, w8, num_classes]}` at the size of the OS-8 endpoint.
  """
  _check_num_classes(num_classes)
  if len(feature_keys) != 3:
    raise ValueError(f"`feature_keys` must name the OS-8, OS-16 and OS-32 endpoints, got "
                     f"{feature_keys!r}.")
  bn_args = {"batch_norm_momentum": batch_norm_momentum,
             "batch_norm_epsilon": batch_norm_epsilon}
  inputs = _endpoint_inputs(endpoints, feature_keys)
  x = jpu.JointPyramidUpsampling(jpu_filters, dilation_rates, name="jpu", **bn_args)(
      [inputs[key] for key in feature_keys])
  x = convolutions.ASPP(aspp_channels, atrous_rates, dropout_rate=dropout, name="aspp",
                        **bn_args)(x)
  return tf_keras.Model(inputs, {"semantic_logits": _classifier(num_classes, "logits")(x)},
                        name=name)


def segmentation_model(backbone, head, *, input_shape=None, normalize_input=True,
                       name=None):
  """Image → backbone → head → every logits tensor resized to the input size.

  Args:
    backbone: `tf_keras.Model` mapping images to a dict of endpoints.
    head: A model from this module (its inputs are a dict of endpoint names).
    input_shape: `(height, width, 3)`; None accepts any size.
    normalize_input: Map pixels from [0, 255] to [-1, 1] first (task-model convention).
    name: Model name; default `<backbone>_<head>`.

  Returns:
    A `tf_keras.Model` on float32 images `[b, h, w, 3]` in [0, 255] returning the head's
    dict with each entry resized (bilinear, align corners, as the DANet/ISA/FastFCN code)
    to float32 `[b, h, w, num_classes]`.
  """
  for argument, model in (("backbone", backbone), ("head", head)):
    if not isinstance(model, tf_keras.Model):
      raise ValueError(f"`{argument}` must be a tf_keras.Model, got {type(model).__name__}.")
  if not isinstance(head.input, dict):
    raise ValueError(f"`head` {head.name!r} must take a dict of endpoints; build it with a "
                     "function of this module.")
  images, endpoints = backbone_endpoints(backbone, input_shape, normalize_input)
  missing = sorted(set(head.input) - set(endpoints))
  if missing:
    raise ValueError(f"`head` {head.name!r} needs endpoints {missing} that `backbone` "
                     f"{backbone.name!r} does not return (it has {sorted(endpoints)}).")
  logits = head({key: endpoints[key] for key in head.input})
  outputs = {key: ResizeToReference(name=key)([value, images])
             for key, value in logits.items()}
  return tf_keras.Model(images, outputs, name=name or f"{backbone.name}_{head.name}")
