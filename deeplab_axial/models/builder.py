"""Builds models from `ExperimentOptions`: the config only chooses values.

`build_model(experiment_config, dataset_info)` returns the task model of
`model.meta_architecture`:

  * `panoptic_deeplab`: Panoptic-DeepLab / Axial-DeepLab (dict of `semantic_logits`,
    `center_heatmap`, `center_offset`);
  * `semantic`: semantic segmentation (dict with `semantic_logits` and the head's
    auxiliary outputs) with `model.context_head.type` one of
      none        the Panoptic-DeepLab semantic branch (decoder + semantic head),
      danet       DANet dual attention on a dilated (OS 8) backbone (+ `position_logits`,
                  `channel_logits`),
      isa         interlaced sparse self-attention on a dilated (OS 8) backbone,
      jpu         FastFCN JPU on an OS-32 backbone, then ASPP,
      gated_scnn  Gated-SCNN shape stream (+ `boundary_logits`),
      segvit      SegViT on a plain ViT (+ `class_logits`, `mask_logits`);
  * `classification`: backbone → global average pooling → dropout → linear logits
    (float32 `[batch, num_classes]`).

Every model takes float32 images `[b, h, w, 3]` in [0, 255] and maps them to [-1, 1]
(pixel / 127.5 − 1) before the backbone, whatever the task, so a backbone trained on
ImageNet here initializes any segmentation model. The backbone is the model's nested
`tf_keras.Model` (the ViT layer for SegViT; see `find_backbone`), which checkpoints save
under the name "backbone" so that `train.init_modules: "backbone"` can restore it alone.
"""
import tf_keras

from deeplab_axial.layers import graph_code
from deeplab_axial.models import catalogue
from deeplab_axial.models import context_heads
from deeplab_axial.models.backbones import axial_resnet
from deeplab_axial.models.backbones import resnet
from deeplab_axial.models.gated_scnn import gated_scnn
from deeplab_axial.models.meta.panoptic_deeplab import PanopticDeepLabDecoder
from deeplab_axial.models.meta.panoptic_deeplab import PanopticHead
from deeplab_axial.models.meta.panoptic_deeplab import ResizeToReference
from deeplab_axial.models.meta.panoptic_deeplab import panoptic_deeplab
from deeplab_axial.models.segvit import segvit

_SEGVIT_PATCH_SIZE = 16


def build_backbone(backbone_options, batch_norm_momentum=None, batch_norm_epsilon=None):
  """The endpoint backbone (`res2..res5` dict) named by `model.backbone`.

  BatchNorm values of None take the catalogue preset's defaults.
  """
  name = backbone_options.name
  family = catalogue.backbone(name).family
  if family == "resnet":
    return resnet.resnet_preset(name, output_stride=backbone_options.output_stride,
                                stem=backbone_options.stem,
                                batch_norm_momentum=batch_norm_momentum,
                                batch_norm_epsilon=batch_norm_epsilon)
  if family == "axial_resnet":
    return axial_resnet.axial_resnet_from_options(
        backbone_options, batch_norm_momentum=batch_norm_momentum,
        batch_norm_epsilon=batch_norm_epsilon)
  raise ValueError(f"model.backbone.name {name!r} has no res2..res5 endpoints; expected one "
                   f"of {', '.join(catalogue.names('resnet') + catalogue.names('axial_resnet'))}"
                   " (ViT backbones go with model.context_head.type 'segvit')")


def _backbone_of(model_options):
  return build_backbone(model_options.backbone, **_batch_norm_args(model_options))


def _normalization():
  return tf_keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name="normalize")


def _batch_norm_args(model_options):
  """`model.batch_norm_momentum/epsilon` where set, else the backbone preset's defaults."""
  return catalogue.batch_norm(
      model_options.backbone.name,
      model_options.batch_norm_momentum if model_options.HasField("batch_norm_momentum")
      else None,
      model_options.batch_norm_epsilon if model_options.HasField("batch_norm_epsilon")
      else None)


def input_sizes(experiment_config, dataset_info):
  """Every input size the model of a config sees, by the field it comes from.

  Returns:
    A dict "dataset.crop_size" → (height, width), plus the evaluation crop (the config's
    or the dataset's) scaled by the largest `eval.scales`, and `export.crop_size` if set.
  """
  sizes = {"dataset.crop_size": tuple(experiment_config.dataset.crop_size)}
  eval_crop = tuple(experiment_config.eval.crop_size) or dataset_info.eval_crop_size
  if eval_crop:
    scale = max(list(experiment_config.eval.scales) or [1.0])
    field = "eval.crop_size" if experiment_config.eval.crop_size else (
        f"the {dataset_info.name} eval crop")
    if scale != 1.0:
      field += f" x eval.scales {scale}"
    sizes[field] = tuple(int(round(side * scale)) for side in eval_crop)
  if experiment_config.export.crop_size:
    sizes["export.crop_size"] = tuple(experiment_config.export.crop_size)
  return sizes


def check_input_sizes(experiment_config, dataset_info):
  """Raises ValueError when a global-span backbone cannot hold an input of the config."""
  backbone = experiment_config.model.backbone
  problem = catalogue.global_span_problem(backbone.name, backbone.stem, backbone.span,
                                          input_sizes(experiment_config, dataset_info))
  if problem:
    raise ValueError(f"model.backbone.span = 0: {problem}")


def _decoder_args(model_options):
  """Arguments shared by the Panoptic-DeepLab decoders."""
  decoder = model_options.decoder
  return {"use_aspp": decoder.use_aspp, "aspp_channels": decoder.aspp_channels,
          "atrous_rates": tuple(decoder.atrous_rates),
          "aspp_dropout_rate": decoder.aspp_dropout,
          "aspp_use_separable_conv": decoder.aspp_use_separable_conv,
          **_batch_norm_args(model_options)}


def build_panoptic_deeplab(model_options, num_classes):
  """Panoptic-DeepLab (or Axial-DeepLab when the backbone is axial and use_aspp false)."""
  decoder, head = model_options.decoder, model_options.panoptic_head
  return panoptic_deeplab(
      _backbone_of(model_options), num_classes,
      semantic_decoder_channels=decoder.semantic_decoder_channels,
      instance_decoder_channels=decoder.instance_decoder_channels,
      semantic_low_level_projections=tuple(decoder.semantic_low_level_projections),
      instance_low_level_projections=tuple(decoder.instance_low_level_projections),
      semantic_head_channels=head.semantic_head_channels,
      center_head_channels=head.center_head_channels,
      offset_head_channels=head.offset_head_channels, **_decoder_args(model_options))


def build_semantic_deeplab(model_options, num_classes):
  """The semantic branch of Panoptic-DeepLab alone: backbone, decoder, semantic head.

  Returns:
    A `tf_keras.Model` on images in [0, 255] returning {"semantic_logits": float32
    [b, h, w, num_classes]} at input resolution.
  """
  decoder = model_options.decoder
  backbone = _backbone_of(model_options)
  images = tf_keras.Input(shape=(None, None, 3), name="images")
  features = graph_code.call_nested(backbone, _normalization()(images))
  x = PanopticDeepLabDecoder(decoder.semantic_decoder_channels,
                             tuple(decoder.semantic_low_level_projections),
                             name="semantic_decoder", **_decoder_args(model_options))(features)
  x = PanopticHead(model_options.panoptic_head.semantic_head_channels, num_classes,
                   name="semantic_head", **_batch_norm_args(model_options))(x)
  logits = ResizeToReference(name="semantic_logits")([x, images])
  return tf_keras.Model(images, {"semantic_logits": logits},
                        name=f"{backbone.name}_semantic_deeplab")


def _context_head(model_options, endpoints, num_classes):
  """The DANet / ISA / JPU head model of `model.context_head`."""
  options = model_options.context_head
  common = {"dropout": options.dropout, **_batch_norm_args(model_options)}
  if options.type == "danet":
    return context_heads.danet_head(
        endpoints, num_classes, feature_key=options.feature_key,
        inter_channels=options.danet.inter_channels or None,
        reduction=options.danet.reduction,
        channel_attention_mode=options.danet.channel_attention_mode, **common)
  if options.type == "isa":
    return context_heads.isa_head(
        endpoints, num_classes, feature_key=options.feature_key,
        channels=options.isa.channels, partition=tuple(options.isa.partition),
        key_channels=options.isa.key_channels or options.isa.channels // 2, **common)
  jpu = options.jpu
  return context_heads.jpu_aspp_head(
      endpoints, num_classes, jpu_filters=jpu.filters,
      dilation_rates=tuple(jpu.dilation_rates), aspp_channels=jpu.aspp_channels,
      atrous_rates=tuple(jpu.atrous_rates), **common)


def build_gated_scnn(model_options, num_classes):
  """Gated-SCNN on the configured backbone (images normalized like every other model)."""
  options = model_options.context_head.gated_scnn
  backbone = _backbone_of(model_options)
  normalize = _normalization()
  return gated_scnn(
      lambda images: graph_code.call_nested(backbone, normalize(images)), num_classes,
      shape_stream_filters=tuple(options.shape_stream_filters),
      aspp_filters=options.aspp_filters, atrous_rates=tuple(options.atrous_rates),
      decoder_filters=options.decoder_filters, low_level_filters=options.low_level_filters,
      dropout=model_options.context_head.dropout, normalize_input=False,
      name=f"{backbone.name}_gated_scnn", **_batch_norm_args(model_options))


def build_segvit(model_options, num_classes, crop_size):
  """SegViT on a ViT preset; position embeddings sized for the training crop."""
  options = model_options.context_head.segvit
  grid = tuple(-(-size // _SEGVIT_PATCH_SIZE) for size in crop_size) if crop_size else None
  return segvit(num_classes, backbone=model_options.backbone.name, shrunk=options.shrunk,
                head_hidden_size=options.head_hidden_size or None,
                head_num_heads=options.head_num_heads or None,
                head_num_layers=options.atm_layers, position_grid_size=grid,
                head_dropout=model_options.context_head.dropout)


def build_semantic_model(model_options, num_classes, crop_size=None):
  """The semantic-segmentation model of `model.context_head.type` (see module doc).

  Args:
    model_options: `ModelOptions` with meta_architecture "semantic".
    num_classes: semantic classes.
    crop_size: (height, width) of training crops (SegViT's position-embedding grid).
  """
  head_type = model_options.context_head.type
  if head_type == "none":
    return build_semantic_deeplab(model_options, num_classes)
  if head_type == "gated_scnn":
    return build_gated_scnn(model_options, num_classes)
  if head_type == "segvit":
    return build_segvit(model_options, num_classes, crop_size)
  if head_type not in ("danet", "isa", "jpu"):
    raise ValueError(f"model.context_head.type {head_type!r} is not one of none, danet, "
                     "isa, jpu, gated_scnn, segvit")
  backbone = _backbone_of(model_options)
  head = _context_head(model_options, backbone.output, num_classes)
  return context_heads.segmentation_model(backbone, head)


def build_classifier(model_options, num_classes):
  """Backbone → global average pooling of `res5` → dropout → float32 logits.

  Returns:
    A `tf_keras.Model` on images in [0, 255] returning logits `[b, num_classes]`.
  """
  backbone = _backbone_of(model_options)
  images = tf_keras.Input(shape=(None, None, 3), name="images")
  features = graph_code.call_nested(backbone, _normalization()(images))
  x = tf_keras.layers.GlobalAveragePooling2D(name="global_pool")(features["res5"])
  if model_options.classifier_dropout:
    x = tf_keras.layers.Dropout(model_options.classifier_dropout, name="dropout")(x)
  logits = tf_keras.layers.Dense(num_classes, dtype="float32", name="logits")(x)
  return tf_keras.Model(images, logits, name=f"{backbone.name}_classifier")


def build_model(experiment_config, dataset_info):
  """The task model of an experiment.

  Args:
    experiment_config: a loaded `ExperimentOptions`.
    dataset_info: the `DatasetInfo` of `dataset.name` (supplies num_classes).

  Returns:
    A `tf_keras.Model` on float32 images `[b, h, w, 3]` in [0, 255] (see module doc).

  Raises:
    ValueError: an unknown meta-architecture, context head or backbone, a dataset of the
      wrong task, or a global-span backbone too short for the train/eval/export crop.
  """
  model_options = experiment_config.model
  meta = model_options.meta_architecture
  expected_task = "classification" if meta == "classification" else "panoptic"
  if dataset_info.task != expected_task:
    raise ValueError(f"model.meta_architecture {meta!r} needs a {expected_task} dataset; "
                     f"dataset.name {dataset_info.name!r} is a {dataset_info.task} dataset")
  check_input_sizes(experiment_config, dataset_info)
  num_classes = dataset_info.num_classes
  if meta == "panoptic_deeplab":
    return build_panoptic_deeplab(model_options, num_classes)
  if meta == "semantic":
    return build_semantic_model(model_options, num_classes,
                                tuple(experiment_config.dataset.crop_size))
  if meta == "classification":
    return build_classifier(model_options, num_classes)
  raise ValueError(f"model.meta_architecture {meta!r} is not one of panoptic_deeplab, "
                   "semantic, classification")


def find_backbone(model):
  """The backbone of a model built here: its first nested `tf_keras.Model`, else the
  layer named "backbone" (SegViT's ViT)."""
  for layer in model.layers:
    if isinstance(layer, tf_keras.Model):
      return layer
  for layer in model.layers:
    if layer.name == "backbone":
      return layer
  raise ValueError(f"model {model.name!r} has no nested backbone model")
