"""Axial-ResNet backbones (Axial-DeepLab, Wang et al., ECCV 2020, §3.2 and §4.1).

A ResNet-50 layout whose 3×3 convolutions are replaced by height-then-width
position-sensitive axial attention (`AxialBlock`, expansion 2). Stage widths (attention
value depth) are 128, 256, 512, 1024 times the width multiplier; block outputs are twice
that.

Presets (`name`), their layout ("official" csrhddlam vs "paper"), widths and default
BatchNorm values are listed in `deeplab_axial.models.catalogue`, the one home of presets.
Global-span tables: the official presets built at a static `input_shape` get 2k−1 rows for
the feature length k each block sees (csrhddlam's `kernel_size`); otherwise every
global-span table covers `catalogue.MAX_GLOBAL_LENGTH` (255) positions.

Stems (`stem`): "conv" — 7×7/2 conv (64 × width channels) + BN + ReLU + 3×3/2 max-pool
(Conv-Stem Axial-ResNet); "inception" — Panoptic-DeepLab's 3×3 convs 64-64-128 (first
stride 2) + 3×3/2 max-pool (Axial-DeepLab); "axial" — the stand-alone stem of the Full
Axial-ResNet: three axial blocks of width 64 × width (output 128 × width), the first with
stride 2, local span `stem_span` (m = 15, AD §4.1), after which stage 2 strides by 2.

Layer names: `stem` (+ `stem_pool_pad`, `stem_pool`) or `stem_block1..3`; blocks
`res{stage}_block{index}` (stage 2..5, index from 1); classifier `logits`.
"""
import tf_keras

from deeplab_axial.layers import axial_attention
from deeplab_axial.layers import axial_blocks
from deeplab_axial.layers import convolutions
from deeplab_axial.models import catalogue
from deeplab_axial.models.backbones import resnet

VARIANTS = catalogue.names("axial_resnet")
STEMS = catalogue.STEMS
STEM_SPAN = catalogue.STEM_SPAN
_STAGE_WIDTHS = (128, 256, 512, 1024)
_EXPANSION = 2


def _conv_initializer():
  # PyTorch kaiming_normal_(mode="fan_out", nonlinearity="relu"), as the official model.
  return tf_keras.initializers.VarianceScaling(2.0, "fan_out", "untruncated_normal")


def _check_span(name, span):
  if span is not None and (isinstance(span, bool) or not isinstance(span, int)
                           or span < 1 or span % 2 == 0):
    raise ValueError(f"`{name}` must be None (global) or an odd positive int, got {span!r}.")


def _ceil_div(size, stride):
  return None if size is None else -(-size // stride)


class _TableLengths:
  """Tracks the static feature size to size each block's global-span tables.

  With `max_global_length=None`, a global-span block gets tables for exactly the longest
  axis it sees at the static input size (the official `kernel_size`); otherwise every
  block gets that fixed length.
  """

  def __init__(self, input_shape, max_global_length, name):
    self.height, self.width = input_shape[0], input_shape[1]
    self.fixed = max_global_length
    self.name = name

  def downsample(self, stride):
    self.height, self.width = _ceil_div(self.height, stride), _ceil_div(self.width, stride)

  def for_block(self, span):
    if span is not None:  # Local tables have `span` rows; the length is unused.
      return axial_attention.DEFAULT_MAX_GLOBAL_LENGTH
    if self.fixed is not None:
      return self.fixed
    if self.height is None or self.width is None:
      return catalogue.MAX_GLOBAL_LENGTH
    return max(self.height, self.width)


def axial_resnet(name, num_classes=None, input_shape=None, span=None, stem="conv",
                 output_stride=32, width_multiplier=None, num_heads=8, *,
                 stem_span=STEM_SPAN, max_global_length=None, zero_init_residual=True,
                 batch_norm_momentum=None, batch_norm_epsilon=None,
                 synchronized_batch_norm=False, recompute=False, model_name=None):
  """Builds an Axial-ResNet preset of `deeplab_axial.models.catalogue`.

  Args:
    name: an Axial-ResNet preset (`VARIANTS`): `axial_resnet_{s,m,l,xl}` (paper layout)
      or csrhddlam's `axial26s, axial50s, axial50m, axial50l` (official layout).
    num_classes: None returns the endpoints dict; an int adds global average pooling and
      a dense classifier returning float32 logits `[batch, num_classes]`.
    input_shape: `(height, width, 3)`; None entries accept any size. A static size gives
      the official presets' global-span tables exactly the feature lengths.
    span: None for global attention, or an odd int m (local m-position window; any input
      size, O(length · m) memory) in every residual block.
    stem: "conv", "inception" or "axial" (see the module docstring).
    output_stride: 8, 16 or 32; stages beyond it keep their resolution (no dilation:
      attention is already long-range, AD §3.2).
    width_multiplier: overrides the variant's width (None = variant default).
    num_heads: attention heads per axial layer (8 in the paper).
    stem_span: span of the axial stem's blocks (only for `stem="axial"`).
    max_global_length: global-span table size: None = the layout's (official at a static
      input size: the feature length at each block; else 255); an int fixes it for every
      layer.
    zero_init_residual: initialize each block's last BN scale to 0.
    batch_norm_momentum, batch_norm_epsilon: every BatchNormalization; None = the
      preset's (official: PyTorch's 0.9 / 1e-5; paper: DeepLab2's 0.99 / 1e-3).
    synchronized_batch_norm: synchronize batch statistics across replicas.
    recompute: recompute every axial block's activations in the backward pass of
      training instead of keeping them (less memory, more time; `AxialBlock`). Layer
      and variable names are the same either way, so checkpoints are interchangeable.
    model_name: the Keras model name (default `name`).

  Returns:
    A `tf_keras.Model` on images `[batch, height, width, 3]` (no normalization). Without
    classes its output is a dict `res2 [b, h/4, w/4, 256w]`, `res3 [b, h/8, w/8, 512w]`,
    `res4 [b, h/16, w/16, 1024w]`, `res5 [b, h/32, w/32, 2048w]` (w = width multiplier;
    strides capped at `output_stride`, sizes rounded up).

  Raises:
    ValueError: on an unknown name/stem, a bad span, output stride, class count or input
      shape.
  """
  if name not in VARIANTS:
    raise ValueError(f"`name` must be one of {VARIANTS}, got {name!r}.")
  if stem not in STEMS:
    raise ValueError(f"`stem` must be one of {STEMS}, got {stem!r}.")
  if output_stride not in (8, 16, 32):
    raise ValueError(f"`output_stride` must be 8, 16 or 32, got {output_stride!r}.")
  _check_span("span", span)
  _check_span("stem_span", stem_span)
  if num_classes is not None and (isinstance(num_classes, bool)
                                  or not isinstance(num_classes, int) or num_classes < 1):
    raise ValueError(f"`num_classes` must be None or a positive int, got {num_classes!r}.")
  input_shape = (None, None, 3) if input_shape is None else tuple(input_shape)
  if len(input_shape) != 3 or input_shape[-1] != 3:
    raise ValueError(f"`input_shape` must be (height, width, 3), got {input_shape!r}.")
  preset = catalogue.backbone(name)
  width = preset.width_multiplier if width_multiplier is None else width_multiplier
  if not width > 0:
    raise ValueError(f"`width_multiplier` must be > 0, got {width_multiplier!r}.")
  if max_global_length is None and preset.layout == "paper":
    max_global_length = catalogue.MAX_GLOBAL_LENGTH
  model_name = model_name or name

  lengths = _TableLengths(input_shape, max_global_length, model_name)
  bn_args = catalogue.batch_norm(name, batch_norm_momentum, batch_norm_epsilon)
  block_args = dict(num_heads=num_heads, expansion=_EXPANSION,
                    zero_init_residual=zero_init_residual,
                    stride_placement=preset.stride_placement,
                    synchronized_batch_norm=synchronized_batch_norm,
                    recompute=recompute, **bn_args)

  def block(x, filters, block_span, strides, block_name):
    layer = axial_blocks.AxialBlock(filters, span=block_span, strides=strides,
                                    max_global_length=lengths.for_block(block_span),
                                    name=block_name, **block_args)
    lengths.downsample(strides)
    return layer(x)

  images = tf_keras.Input(shape=input_shape, name="images")
  if stem == "axial":
    x = images
    for index in range(3):
      x = block(x, int(64 * width), stem_span, 2 if index == 0 else 1,
                f"stem_block{index + 1}")
    current_stride, first_stage_stride = 2, 2
  else:
    if stem == "conv":
      x = convolutions.ConvBNReLU(int(64 * width), 7, strides=2,
                                  kernel_initializer=_conv_initializer(), name="stem",
                                  **bn_args)(images)
    else:
      x = convolutions.InceptionStem(kernel_initializer=_conv_initializer(), name="stem",
                                     **bn_args)(images)
    x = resnet.stem_max_pool(x)
    lengths.downsample(4)
    current_stride, first_stage_stride = 4, 1

  endpoints = {}
  for stage, (stage_width, blocks) in enumerate(zip(_STAGE_WIDTHS, preset.block_counts),
                                                start=2):
    stride = first_stage_stride if stage == 2 else 2
    if current_stride * stride > output_stride:
      stride = 1
    current_stride *= stride
    for index in range(blocks):
      x = block(x, int(stage_width * width), span, stride if index == 0 else 1,
                f"res{stage}_block{index + 1}")
    endpoints[f"res{stage}"] = x

  return resnet.endpoints_or_classifier(images, endpoints, num_classes, model_name)


def axial_resnet_from_options(backbone_options, batch_norm_momentum=None,
                              batch_norm_epsilon=None, input_shape=None, num_classes=None,
                              synchronized_batch_norm=False):
  """The Axial-ResNet named by a `BackboneOptions` proto (see experiment.proto).

  `span: 0` means global; `width_multiplier: 0` the preset's width. Exactly
  `axial_resnet` with the same values, so a preset is the same model from a config and
  from Python (see `deeplab_axial.models.catalogue`); `recompute` as `axial_resnet`'s.

  Args:
    backbone_options: a `deeplab_axial.BackboneOptions` message.
    batch_norm_momentum, batch_norm_epsilon: BatchNormalization values; None = the preset's.
    input_shape: optional `(height, width, 3)`.
    num_classes: None (endpoints) or classifier classes.
    synchronized_batch_norm: synchronize batch statistics across replicas.

  Returns:
    The `tf_keras.Model` of `axial_resnet`.
  """
  return axial_resnet(
      backbone_options.name, num_classes=num_classes, input_shape=input_shape,
      span=backbone_options.span or None, stem=backbone_options.stem,
      output_stride=backbone_options.output_stride,
      width_multiplier=backbone_options.width_multiplier or None,
      num_heads=backbone_options.num_heads, batch_norm_momentum=batch_norm_momentum,
      batch_norm_epsilon=batch_norm_epsilon,
      synchronized_batch_norm=synchronized_batch_norm,
      recompute=backbone_options.recompute)
