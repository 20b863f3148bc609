"""Gated-SCNN model builder: any backbone with res2..res5 endpoints + shape stream.

  images [0, 255] ─ normalize ─ backbone ─ res2..res5
  ShapeStream(image, res2..res5) → boundary_logits, fused_boundary
  GatedScnnFusion(res5, fused_boundary) (ASPP + boundary branch) → dropout
  GatedScnnDecoder(aspp, res2) → semantic_logits

The released model uses a WideResNet-38 at output stride 8 (ASPP rates 12, 24, 36) and a
decoder on the stride-2 features; here the decoder uses `res2` (stride 4) and the shape
stream runs at res2's resolution (see `layers.gated_scnn`).
"""
from typing import Callable, Optional, Sequence, Tuple, Union

import tf_keras

from deeplab_axial.layers import gated_scnn as gscnn_layers

# ImageNet statistics on the [0, 255] scale (torchvision / DeepLab convention).
_IMAGENET_MEAN = (123.675, 116.28, 103.53)
_IMAGENET_STD = (58.395, 57.12, 57.375)
_ENDPOINTS = ("res2", "res3", "res4", "res5")


def gated_scnn(backbone: Union[tf_keras.Model, Callable], num_classes: int,
               input_shape: Optional[Tuple[Optional[int], Optional[int], int]] = None,
               shape_stream_filters: Sequence[int] = (32, 16, 8),
               shape_stream_stem_filters: int = 64, aspp_filters: int = 256,
               atrous_rates: Sequence[int] = (6, 12, 18), decoder_filters: int = 256,
               low_level_filters: int = 48, dropout: float = 0.0,
               batch_norm_momentum: float = 0.9, batch_norm_epsilon: float = 1e-5,
               normalize_input: bool = True, name: str = "gated_scnn") -> tf_keras.Model:
  """Builds Gated-SCNN around `backbone`.

  Args:
    backbone: a `tf_keras.Model` (or callable on a Keras tensor) mapping normalized
      images `[batch, H, W, 3]` to a dict with at least `res2`..`res5`.
    num_classes: number of semantic classes.
    input_shape: `(height, width, 3)`; None entries for any size (default).
    shape_stream_filters, shape_stream_stem_filters: `ShapeStream` widths.
    aspp_filters, atrous_rates: `GatedScnnFusion` settings ((12, 24, 36) at stride 8).
    decoder_filters, low_level_filters: `GatedScnnDecoder` widths.
    dropout: dropout rate on the fused ASPP features before the decoder (layer
      `aspp_dropout`; DeepLab's ASPP dropout). 0 = none, as the released model.
    batch_norm_momentum, batch_norm_epsilon: every BatchNormalization of the shape
      stream, fusion and decoder (PyTorch's 0.1 momentum and 1e-5 by default).
    normalize_input: subtract the ImageNet mean and divide by its std before the backbone
      (the shape stream's image gradient always uses the raw image).
    name: model name.

  Returns:
    `tf_keras.Model` mapping float images `[batch, H, W, 3]` in [0, 255] to a dict with
    float32 `semantic_logits [batch, H, W, num_classes]` and `boundary_logits
    [batch, H, W, 1]` (losses: `losses.GatedScnnLoss`).
  """
  input_shape = tuple(input_shape) if input_shape is not None else (None, None, 3)
  if len(input_shape) != 3 or input_shape[-1] != 3:
    raise ValueError(f"input_shape must be (height, width, 3), got {input_shape!r}")
  images = tf_keras.Input(shape=input_shape, name="images")
  features = images
  if normalize_input:
    features = tf_keras.layers.Normalization(
        mean=_IMAGENET_MEAN, variance=[s * s for s in _IMAGENET_STD],
        name="normalize")(images)
  endpoints = backbone(features)
  if not isinstance(endpoints, dict) or not set(_ENDPOINTS) <= set(endpoints):
    found = sorted(endpoints) if isinstance(endpoints, dict) else type(endpoints).__name__
    raise ValueError(f"backbone must return a dict with keys res2, res3, res4, res5; got "
                     f"{found}")
  bn_args = {"batch_norm_momentum": batch_norm_momentum,
             "batch_norm_epsilon": batch_norm_epsilon}
  shape = gscnn_layers.ShapeStream(
      filters=tuple(shape_stream_filters), stem_filters=shape_stream_stem_filters,
      name="shape_stream", **bn_args)(
          {"image": images, **{k: endpoints[k] for k in _ENDPOINTS}})
  aspp = gscnn_layers.GatedScnnFusion(aspp_filters, tuple(atrous_rates), name="aspp",
                                      **bn_args)([endpoints["res5"], shape["fused_boundary"]])
  if dropout:
    aspp = tf_keras.layers.Dropout(dropout, name="aspp_dropout")(aspp)
  semantic_logits = gscnn_layers.GatedScnnDecoder(
      num_classes, decoder_filters, low_level_filters, name="decoder", **bn_args)(
          [aspp, endpoints["res2"], images])
  return tf_keras.Model(images, {"semantic_logits": semantic_logits,
                                 "boundary_logits": shape["boundary_logits"]}, name=name)
