"""The Panoptic-DeepLab post-processing settings, resolved once from a config.

`PostProcessingOptions` is what the evaluator, the SavedModel serving graph and
`deeplab_axial.predict` run `ops.panoptic_inference` with. `resolve_post_processing` is the
one place where the settings are chosen: the dataset descriptor's defaults (`DatasetInfo`),
then every field the config's `eval` section sets explicitly, then explicit overrides.
"""
import dataclasses
from typing import Tuple

import numpy as np

from deeplab_axial import ops

# `eval` fields that override the dataset's default when the config sets them.
_EVAL_FIELDS = ("center_threshold", "nms_kernel", "top_k", "stuff_area")


@dataclasses.dataclass(frozen=True)
class PostProcessingOptions:
  """Arguments of `ops.panoptic_inference` besides the model outputs.

  Attributes:
    thing_class_ids: semantic ids of the thing classes.
    label_divisor: panoptic = semantic * label_divisor + instance; must exceed top_k.
    ignore_label: void semantic id.
    center_threshold, nms_kernel, top_k, stuff_area, thing_area: see
      `ops.panoptic_inference`.
  """
  thing_class_ids: Tuple[int, ...]
  label_divisor: int
  ignore_label: int = 255
  center_threshold: float = 0.1
  nms_kernel: int = 7
  top_k: int = 200
  stuff_area: int = 2048
  thing_area: int = 0

  def __post_init__(self):
    object.__setattr__(self, "thing_class_ids", tuple(int(c) for c in self.thing_class_ids))
    # The graph compares in float32 (and proto floats are float32): one value either way.
    object.__setattr__(self, "center_threshold", float(np.float32(self.center_threshold)))

  def as_dict(self):
    return dataclasses.asdict(self)

  def __call__(self, semantic_probs, center_heatmap, center_offset):
    """`ops.panoptic_inference` on softmax probabilities (as evaluation and serving)."""
    fields = self.as_dict()
    fields["thing_class_ids"] = list(self.thing_class_ids)
    return ops.panoptic_inference(semantic_probs, center_heatmap, center_offset,
                                  semantic_is_probabilities=True, **fields)


def resolve_post_processing(dataset_info, eval_options=None, **overrides
                            ) -> PostProcessingOptions:
  """The post-processing settings of an experiment.

  Args:
    dataset_info: the `DatasetInfo` whose label space and defaults apply.
    eval_options: the config's `eval` section (`EvalOptions`) or None; each of
      center_threshold, nms_kernel, top_k set in it (and a non-zero stuff_area) replaces
      the dataset's default.
    **overrides: `PostProcessingOptions` fields that win over both (None = unset).

  Returns:
    A `PostProcessingOptions`.
  """
  fields = {field.name: getattr(dataset_info, field.name)
            for field in dataclasses.fields(PostProcessingOptions)
            if hasattr(dataset_info, field.name)}
  if eval_options is not None:
    for name in _EVAL_FIELDS:
      value = getattr(eval_options, name)
      if eval_options.HasField(name) and not (name == "stuff_area" and value == 0):
        fields[name] = value
  fields.update({name: value for name, value in overrides.items() if value is not None})
  return PostProcessingOptions(**fields)


def post_processing_from_config(config, dataset_info) -> PostProcessingOptions:
  """`resolve_post_processing` of an `ExperimentOptions` (its `eval` section)."""
  return resolve_post_processing(dataset_info, config.eval)


__all__ = ["PostProcessingOptions", "post_processing_from_config", "resolve_post_processing"]
