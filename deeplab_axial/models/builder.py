"""Builds models from `ExperimentOptions`: the config only chooses values.

`build_model(experiment_config, dataset_info)` returns the task model; the backbone is the
model's nested `tf_keras.Model` (see `find_backbone`), which checkpoints save under the
name "backbone" so that `train.init_modules: "backbone"` can restore it alone.
"""
import tf_keras

from deeplab_axial.models.panoptic_deeplab import panoptic_deeplab
from deeplab_axial.models import resnet

_RESNETS = {"resnet50": resnet.resnet50, "resnet101": resnet.resnet101}


def build_backbone(backbone_options, batch_norm_momentum=0.99, batch_norm_epsilon=1e-3):
  """The endpoint backbone (`res2..res5` dict) named by `model.backbone`."""
  name = backbone_options.name
  if name in _RESNETS:
    return _RESNETS[name](output_stride=backbone_options.output_stride,
                          stem=backbone_options.stem, batch_norm_momentum=batch_norm_momentum,
                          batch_norm_epsilon=batch_norm_epsilon)
  if name.startswith("axial"):
    from deeplab_axial.models import axial_resnet  # pylint: disable=import-outside-toplevel
    return axial_resnet.axial_resnet_from_options(
        backbone_options, batch_norm_momentum=batch_norm_momentum,
        batch_norm_epsilon=batch_norm_epsilon)
  raise ValueError(f"model.backbone.name {name!r} cannot serve as a Panoptic-DeepLab "
                   f"backbone; expected resnet50, resnet101 or an axial_* / axial26s/50* "
                   "variant")


def build_panoptic_deeplab(model_options, num_classes):
  """Panoptic-DeepLab (or Axial-DeepLab when the backbone is axial and use_aspp false)."""
  decoder, head = model_options.decoder, model_options.panoptic_head
  backbone = build_backbone(model_options.backbone, model_options.batch_norm_momentum,
                            model_options.batch_norm_epsilon)
  return panoptic_deeplab(
      backbone, num_classes, use_aspp=decoder.use_aspp, aspp_channels=decoder.aspp_channels,
      atrous_rates=tuple(decoder.atrous_rates), aspp_dropout_rate=decoder.aspp_dropout,
      semantic_decoder_channels=decoder.semantic_decoder_channels,
      instance_decoder_channels=decoder.instance_decoder_channels,
      semantic_low_level_projections=tuple(decoder.semantic_low_level_projections),
      instance_low_level_projections=tuple(decoder.instance_low_level_projections),
      semantic_head_channels=head.semantic_head_channels,
      center_head_channels=head.center_head_channels,
      offset_head_channels=head.offset_head_channels,
      batch_norm_momentum=model_options.batch_norm_momentum,
      batch_norm_epsilon=model_options.batch_norm_epsilon)


def build_model(experiment_config, dataset_info):
  """The task model of an experiment.

  Args:
    experiment_config: a loaded `ExperimentOptions`.
    dataset_info: the `DatasetInfo` of `dataset.name` (supplies num_classes).

  Returns:
    A `tf_keras.Model` on float32 images `[b, h, w, 3]` in [0, 255].
  """
  meta = experiment_config.model.meta_architecture
  if meta == "panoptic_deeplab":
    return build_panoptic_deeplab(experiment_config.model, dataset_info.num_classes)
  raise ValueError(f"model.meta_architecture {meta!r} is not supported by build_model yet; "
                   "expected panoptic_deeplab")


def find_backbone(model):
  """The backbone of a model built here: its first nested `tf_keras.Model`."""
  for layer in model.layers:
    if isinstance(layer, tf_keras.Model):
      return layer
  raise ValueError(f"model {model.name!r} has no nested backbone model")
