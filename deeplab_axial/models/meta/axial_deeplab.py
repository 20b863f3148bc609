"""Axial-DeepLab presets (AD §3.2, Tab. 2): Panoptic-DeepLab on an Axial-ResNet.

`axial_deeplab("axial_deeplab_l", num_classes=133)` is Axial-ResNet-L with the
Panoptic-DeepLab stem (three 3×3 convs 64-64-128), span 65, output stride 16 (the last
stage keeps its resolution; attention needs no dilation), no ASPP (a 1×1 conv + BN + ReLU
to 256 in both decoders, papers.md §2.5) and Panoptic-DeepLab's dual decoders and heads.
`"panoptic_deeplab_resnet50"` is the ResNet-50 + ASPP baseline of the same API. The
presets and their defaults are `deeplab_axial.models.catalogue.MODELS`.
"""
from deeplab_axial.models import catalogue
from deeplab_axial.models.backbones.axial_resnet import axial_resnet
from deeplab_axial.models.meta.panoptic_deeplab import panoptic_deeplab
from deeplab_axial.models.meta.panoptic_deeplab import panoptic_deeplab_resnet50

PRESETS = tuple(catalogue.MODELS)


def axial_deeplab(name, num_classes, input_shape=None, span=65, *, output_stride=16,
                  width_multiplier=None, num_heads=8, batch_norm_momentum=None,
                  batch_norm_epsilon=None, synchronized_batch_norm=False, **kwargs):
  """Builds an Axial-DeepLab (or the Panoptic-DeepLab ResNet-50 baseline) preset.

  Args:
    name: one of `PRESETS`.
    num_classes: semantic classes (COCO 133, Cityscapes 19).
    input_shape: `(height, width, 3)` or None for any size.
    span: backbone attention span: an odd m (65, the preset default: the paper's main
      panoptic results, any input size) or None for global (tables cover feature axes up
      to 255, i.e. inputs up to about 1020 px). Ignored by the ResNet-50 baseline.
    output_stride: backbone output stride (16, the preset default).
    width_multiplier: overrides the Axial-ResNet width (None = S 0.5, M 0.75, L 1, XL 2).
    num_heads: attention heads.
    batch_norm_momentum, batch_norm_epsilon: every BatchNormalization; None = the preset's
      (DeepLab2's 0.99, 1e-3).
    synchronized_batch_norm: synchronize the backbone's batch statistics across replicas.
    **kwargs: further `panoptic_deeplab` arguments (decoder and head widths, ...).

  Returns:
    A `tf_keras.Model` on float32 images `[b, h, w, 3]` in [0, 255] returning a dict of
    float32 tensors at input resolution: `semantic_logits [b, h, w, num_classes]`,
    `center_heatmap [b, h, w, 1]`, `center_offset [b, h, w, 2]` ((dy, dx) in pixels).

  Raises:
    ValueError: on an unknown preset or bad arguments.
  """
  if name not in catalogue.MODELS:
    raise ValueError(f"`name` must be one of {PRESETS}, got {name!r}.")
  preset = catalogue.model(name)
  bn_args = catalogue.batch_norm(name, batch_norm_momentum, batch_norm_epsilon)
  if preset.backbone == "resnet50":
    return panoptic_deeplab_resnet50(
        num_classes, input_shape=input_shape, output_stride=output_stride, stem=preset.stem,
        use_aspp=preset.use_aspp, **bn_args, **kwargs)
  backbone = axial_resnet(
      preset.backbone, input_shape=input_shape, span=span, stem=preset.stem,
      output_stride=output_stride, width_multiplier=width_multiplier, num_heads=num_heads,
      synchronized_batch_norm=synchronized_batch_norm, **bn_args)
  kwargs.setdefault("name", name)
  return panoptic_deeplab(backbone, num_classes, input_shape=input_shape,
                          use_aspp=preset.use_aspp, **bn_args, **kwargs)
