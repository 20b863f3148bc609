"""SavedModel export for TF Serving: signatures, in-graph post-processing, versioned layout.

The exported graph holds the whole inference path — decoding (bytes signature), padding,
the model, softmax, `deeplab_axial.ops.panoptic_inference` and cropping back — built from
stock TensorFlow ops only, so plain TensorFlow (TF Serving, `tf.saved_model.load` in a
process without this package) serves it.

Signatures (method `tensorflow/serving/predict`):

* `serving_default`: `images` uint8 `[batch, height, width, 3]`, any height/width.
* `serve_image_bytes`: `image_bytes` string `[batch]`, encoded PNG/JPEG (GIF/BMP/WebP also
  decode; the first frame of an animation is used). Images of different sizes may share a
  batch: they are padded (bottom/right) to the largest height and width, and every output
  map is `[batch, max_height, max_width]`; pixels outside image `i`'s own
  `image_height[i] × image_width[i]` hold the void values below.

The outputs are the task's (`Task.serving_module`; docs/serving.md has the table):
semantic models return `semantic`, `semantic_probs` (and Gated-SCNN `boundary`) with the
padding and void rules below (`tasks.semantic.SemanticServingModule`); classifiers
return `classes`, `probabilities`, `top_5` after the in-graph evaluation resize + centre
crop (`tasks.classification.ClassificationServingModule`). Panoptic-DeepLab outputs
(both signatures), with H, W = the (largest) input height and width:

* `panoptic` int32 `[batch, H, W]`: `semantic * label_divisor + instance`; void (and the
  outside of a smaller image in a bytes batch) is `ignore_label * label_divisor`.
* `semantic` int32 `[batch, H, W]`: argmax class (outside: `ignore_label`).
* `instance` int32 `[batch, H, W]`: per-class instance id, 0 for stuff/void (outside: 0).
* `semantic_probs` float32 `[batch, H, W, num_classes]` (omitted with
  `include_semantic_probs=False`; outside: 0).
* `center_heatmap` float32 `[batch, H, W]` (the raw centre regression; outside: 0).
* `instance_panoptic_ids` int32 `[batch, K]`, `instance_scores` float32 `[batch, K]`:
  K = `top_k` instance slots (see `panoptic_inference`), -1 / 0 for empty slots.
* `image_height`, `image_width` int32 `[batch]`: each image's own size.

Size rule. Dynamic mode (default): the batch is padded at the bottom/right with
`pad_value` (127.5, i.e. 0 after the model's normalization, as the evaluation pipeline
pads) to the smallest `k * size_multiple + size_offset` (k >= 1) holding it, e.g. 1025 ×
2049 for Cityscapes with multiple 32 and offset 1, the sizes at which align-corners
resizing inside Panoptic-DeepLab is exact. Static mode (`static_size=(h, w)`, for
TPU/XLA): the model and post-processing always run on `[batch, h, w, 3]`; an image that
fits is padded, a larger one is first resized (bilinear, aspect ratio kept) to fit, and
its outputs are resized back (nearest for id maps, bilinear for float maps). With
`static_size` equal to the evaluation crop size the exported model reproduces the
evaluator's numbers exactly. Post-processing runs on the padded map, as in evaluation.

Layout: `<output_dir>/<version>/{saved_model.pb, variables/, fingerprint.pb,
assets.extra/deeplab_axial_export.json}`; the JSON records the label space and
post-processing options (read by `deeplab_axial.predict`). The version directory is
written under a temporary name and renamed into place, so a TF Serving instance watching
`output_dir` never sees a half-written model.
"""
import json
import os
import shutil
import uuid

import numpy as np
import tensorflow as tf

from deeplab_axial import tasks
from deeplab_axial.tasks import post_processing as post_processing_lib
from deeplab_axial.tasks.panoptic import PanopticServingModule
from deeplab_axial.tasks.serving import BYTES_SIGNATURE
from deeplab_axial.tasks.serving import DEFAULT_SIGNATURE
from deeplab_axial.tasks.serving import ServingOptions
from deeplab_axial.tasks.serving import padded_length

METADATA_FILE = os.path.join("assets.extra", "deeplab_axial_export.json")
# A served model is not differentiated. The attention layers trace no custom gradient in
# a save context (fused_attention.custom_gradient_unless_saving); this keeps TF from
# tracing and storing those of any other layer (TF's default, which took two thirds of
# the demo model's save for the attention before; benchmarks/README.md, "Export time").
_SAVE_OPTIONS = tf.saved_model.SaveOptions(experimental_custom_gradients=False)


def next_version(output_dir):
  """1 + the largest numeric subdirectory of `output_dir` (1 when there is none)."""
  if not tf.io.gfile.isdir(output_dir):
    return 1
  versions = [int(name.rstrip("/")) for name in tf.io.gfile.listdir(output_dir)
              if name.rstrip("/").isdigit()
              and tf.io.gfile.isdir(os.path.join(output_dir, name))]
  return max(versions, default=0) + 1


def serving_options(*, dataset_info=None, thing_class_ids=None, label_divisor=None,
                    ignore_label=None, center_threshold=None, nms_kernel=None, top_k=None,
                    stuff_area=None, thing_area=None, **kwargs) -> ServingOptions:
  """ServingOptions from explicit values, falling back to a `DatasetInfo`'s defaults.

  The post-processing fields are resolved by `tasks.resolve_post_processing` (the one
  place the evaluator's settings come from too); `**kwargs` are the serving fields.
  """
  explicit = {"thing_class_ids": thing_class_ids, "label_divisor": label_divisor,
              "ignore_label": ignore_label, "center_threshold": center_threshold,
              "nms_kernel": nms_kernel, "top_k": top_k, "stuff_area": stuff_area,
              "thing_area": thing_area}
  if dataset_info is None:
    missing = [key for key in ("thing_class_ids", "label_divisor") if explicit[key] is None]
    if missing:
      raise ValueError(f"export needs {missing}: pass them or a `dataset_info`")
    post_processing = post_processing_lib.PostProcessingOptions(
        **{key: value for key, value in explicit.items() if value is not None})
  else:
    post_processing = tasks.resolve_post_processing(dataset_info, **explicit)
  return ServingOptions(post_processing, **kwargs)


def export_saved_model(model, output_dir, *, version=None, overwrite=False,
                       dataset_info=None, metadata=None, serving=None, task=None,
                       **options) -> str:
  """Exports `model` with in-graph post-processing to `<output_dir>/<version>/`.

  Args:
    model: the task's `tf_keras.Model` (a Panoptic-DeepLab one without `task`).
    output_dir: the TF Serving model base path.
    version: positive int; None = 1 + the largest existing numeric version.
    overwrite: replace an existing `<output_dir>/<version>` (otherwise an error).
    dataset_info: optional `deeplab_axial.data.datasets.DatasetInfo`; supplies the label
      space and post-processing defaults, and its class names/colours are recorded in the
      metadata JSON.
    metadata: optional JSON-able dict merged into the metadata JSON (e.g. the config).
    serving: a ready `ServingOptions` (then pass no `**options`).
    task: the `deeplab_axial.tasks.Task` whose `serving_module` is exported (default:
      the panoptic serving module). The metadata JSON records its `task`
      (`model.meta_architecture`).
    **options: `serving_options` / `ServingOptions` fields: thing_class_ids,
      label_divisor, ignore_label, center_threshold, nms_kernel, top_k, stuff_area,
      thing_area, size_multiple, size_offset, static_size, pad_value,
      include_semantic_probs, jit_compile.

  Returns:
    The path of the written version directory.

  Raises:
    ValueError: for bad options or a model without Panoptic-DeepLab outputs.
    FileExistsError: when the version exists and `overwrite` is False.
  """
  if serving is None:
    serving = serving_options(dataset_info=dataset_info, **options)
  elif options:
    raise ValueError(f"pass either `serving` or ServingOptions fields, not both; got "
                     f"{sorted(options)}")
  if version is None:
    version = next_version(output_dir)
  if isinstance(version, bool) or not isinstance(version, (int, np.integer)) or version < 1:
    raise ValueError(f"version must be a positive int, got {version!r}")
  final_dir = os.path.join(output_dir, str(int(version)))
  if tf.io.gfile.exists(final_dir) and not overwrite:
    raise FileExistsError(f"export version directory {final_dir} already exists; pass "
                          f"another version, version=None (auto) or overwrite=True")
  tf.io.gfile.makedirs(output_dir)
  # A dot-name is not a numeric version, so a watching server ignores it until the rename.
  temp_dir = os.path.join(output_dir, f".tmp-{int(version)}-{uuid.uuid4().hex}")
  module = task.serving_module(model, serving) if task else PanopticServingModule(
      model, serving)
  try:
    tf.saved_model.save(module, temp_dir, signatures=module.signature_functions(),
                        options=_SAVE_OPTIONS)
    tf.io.gfile.makedirs(os.path.join(temp_dir, os.path.dirname(METADATA_FILE)))
    with tf.io.gfile.GFile(os.path.join(temp_dir, METADATA_FILE), "w") as f:
      json.dump(_metadata(serving, dataset_info, metadata, model, module.TASK), f, indent=1)
    if tf.io.gfile.exists(final_dir):
      _replace_dir(temp_dir, final_dir)
    else:
      tf.io.gfile.rename(temp_dir, final_dir)
  finally:
    if tf.io.gfile.exists(temp_dir):
      tf.io.gfile.rmtree(temp_dir)
  return final_dir


def _replace_dir(new_dir, final_dir):
  old_dir = f"{new_dir}-old"
  tf.io.gfile.rename(final_dir, old_dir)
  tf.io.gfile.rename(new_dir, final_dir)
  shutil.rmtree(old_dir, ignore_errors=True)


def _metadata(options, dataset_info, extra, model, task):
  metadata = {"format": "deeplab_axial_export/1", "model_name": model.name, "task": task,
              "signatures": [DEFAULT_SIGNATURE, BYTES_SIGNATURE],
              "serving_options": options.to_json()}
  shape = model.output_shape
  metadata["num_classes"] = (shape["semantic_logits"] if isinstance(shape, dict)
                             else shape)[-1]
  if dataset_info is not None:
    metadata["dataset"] = dataset_info.to_json()
  metadata.update(extra or {})
  return metadata


def load_metadata(export_dir) -> dict:
  """The metadata JSON of an export directory ({} when absent, e.g. a foreign model)."""
  path = os.path.join(export_dir, METADATA_FILE)
  if not tf.io.gfile.exists(path):
    return {}
  with tf.io.gfile.GFile(path) as f:
    return json.load(f)


def resolve_export_dir(path) -> str:
  """`path` itself if it holds saved_model.pb, else its highest numeric version."""
  if tf.io.gfile.exists(os.path.join(path, "saved_model.pb")):
    return path
  if tf.io.gfile.isdir(path):
    latest = next_version(path) - 1
    if latest >= 1 and tf.io.gfile.exists(os.path.join(path, str(latest), "saved_model.pb")):
      return os.path.join(path, str(latest))
  raise FileNotFoundError(f"no SavedModel at {path}: expected {path}/saved_model.pb or a "
                          f"base directory with numeric version subdirectories")


def serving_options_from_config(config, dataset_info, *, static_size=None,
                                **overrides) -> ServingOptions:
  """ServingOptions of an experiment: its post-processing exactly as evaluated.

  Args:
    config: a loaded `ExperimentOptions`.
    dataset_info: the `DatasetInfo` of `config.dataset.name`.
    static_size: (height, width) for the static-shape variant, or None.
    **overrides: further ServingOptions (serving) fields.
  """
  return ServingOptions(
      tasks.post_processing_from_config(config, dataset_info),
      size_multiple=max(32, config.model.backbone.output_stride),
      static_size=tuple(static_size) if static_size else None, **overrides)


__all__ = ["BYTES_SIGNATURE", "DEFAULT_SIGNATURE", "METADATA_FILE", "PanopticServingModule",
           "ServingOptions", "export_saved_model", "load_metadata", "next_version",
           "padded_length", "resolve_export_dir",
           "serving_options", "serving_options_from_config"]
