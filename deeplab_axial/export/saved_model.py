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

Outputs (both signatures), with H, W = the (largest) input height and width:

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
import dataclasses
import json
import os
import shutil
import uuid
from typing import Optional, Tuple

import numpy as np
import tensorflow as tf

from deeplab_axial import ops
from deeplab_axial.training.experiment import resolve_checkpoint

METADATA_FILE = os.path.join("assets.extra", "deeplab_axial_export.json")
DEFAULT_SIGNATURE = "serving_default"
BYTES_SIGNATURE = "serve_image_bytes"
_REQUIRED_MODEL_OUTPUTS = ("semantic_logits", "center_heatmap", "center_offset")

# Leading bytes of the formats tf.io.decode_image reads (WebP: "RIFF" .... "WEBP").
_IMAGE_MAGIC = (b"\x89PNG", b"\xff\xd8\xff", b"GIF8", b"BM", b"RIFF")


@dataclasses.dataclass(frozen=True)
class ServingOptions:
  """Everything the serving graph needs besides the model.

  Attributes:
    thing_class_ids: semantic ids of the thing classes.
    label_divisor: panoptic = semantic * label_divisor + instance; must exceed top_k.
    ignore_label: void semantic id.
    center_threshold, nms_kernel, top_k, stuff_area, thing_area: `panoptic_inference`
      options.
    size_multiple, size_offset: dynamic-mode padding to k * size_multiple + size_offset.
    static_size: (height, width) the model always runs at, or None (dynamic mode).
    pad_value: image padding value in [0, 255].
    include_semantic_probs: whether to output `semantic_probs`.
    jit_compile: XLA-compile the model + post-processing (static mode only).
  """
  thing_class_ids: Tuple[int, ...]
  label_divisor: int
  ignore_label: int = 255
  center_threshold: float = 0.1
  nms_kernel: int = 7
  top_k: int = 200
  stuff_area: int = 2048
  thing_area: int = 0
  size_multiple: int = 32
  size_offset: int = 1
  static_size: Optional[Tuple[int, int]] = None
  pad_value: float = 127.5
  include_semantic_probs: bool = True
  jit_compile: bool = False

  def __post_init__(self):
    object.__setattr__(self, "thing_class_ids", tuple(int(c) for c in self.thing_class_ids))
    if isinstance(self.size_multiple, bool) or not isinstance(self.size_multiple, int) or (
        self.size_multiple < 1):
      raise ValueError(f"size_multiple must be a positive int, got {self.size_multiple!r}")
    if not isinstance(self.size_offset, int) or not 0 <= self.size_offset <= 1:
      raise ValueError(f"size_offset must be 0 or 1, got {self.size_offset!r}")
    if self.static_size is not None:
      static_size = tuple(self.static_size)
      if len(static_size) != 2 or not all(
          isinstance(v, (int, np.integer)) and v > 0 for v in static_size):
        raise ValueError(f"static_size must be (height, width) positive ints, got "
                         f"{self.static_size!r}")
      object.__setattr__(self, "static_size", tuple(int(v) for v in static_size))
    elif self.jit_compile:
      raise ValueError("jit_compile=True needs static_size (XLA compiles one static shape)")
    if not 0.0 <= self.pad_value <= 255.0:
      raise ValueError(f"pad_value must be in [0, 255], got {self.pad_value!r}")

  def to_json(self):
    fields = dataclasses.asdict(self)
    fields["thing_class_ids"] = list(self.thing_class_ids)
    fields["static_size"] = list(self.static_size) if self.static_size else None
    return fields


def padded_length(length, multiple, offset):
  """Smallest `k * multiple + offset` (k >= 1) that is >= `length` (ints or int32 tensors)."""
  steps = (length - offset + multiple - 1) // multiple
  return tf.maximum(steps, 1) * multiple + offset


class PanopticServingModule(tf.Module):
  """A `tf.Module` with the serving signatures of a Panoptic-DeepLab model.

  Args:
    model: a `tf_keras.Model` on float32 images `[b, h, w, 3]` in [0, 255] returning a
      dict with `semantic_logits`, `center_heatmap` and `center_offset` at input
      resolution (e.g. `deeplab_axial.models.panoptic_deeplab(...)`).
    options: a `ServingOptions`.
  """

  def __init__(self, model, options: ServingOptions, name="panoptic_serving"):
    super().__init__(name=name)
    # Only the variables are tracked, not the Keras model object: saving the model itself
    # would also serialize a trace of every layer's `call` (Keras SavedModel metadata),
    # which multiplies save and load time and is useless to a server.
    self._model_fn = lambda images: model(images, training=False)
    self.model_variables = list(model.variables)
    self._options = options
    # One tf.function shared by both signatures: they call it with the same input spec, so
    # the model and post-processing are traced (and stored) once.
    self._infer_fn = tf.function(self._infer, jit_compile=options.jit_compile or None)

  @property
  def options(self):
    return self._options

  # Signatures -------------------------------------------------------------------------

  @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8,
                                              name="images")])
  def serve_images(self, images):
    """`serving_default`: uint8 `[batch, height, width, 3]` → outputs (module docstring)."""
    # The restored signature checks the dtype but not the shape; EnsureShape does, and its
    # node name shows up in the error.
    images = tf.ensure_shape(
        images, [None, None, None, 3],
        name="images_must_be_uint8_batch_height_width_3_RGB")
    shape = tf.shape(images)
    checks = [
        _assert(tf.greater(shape[0], 0),
                "serving_default: `images` holds no image (batch size 0); shape {}", shape),
        _assert(tf.reduce_all(tf.greater(shape[1:3], 0)),
                "serving_default: `images` must have height and width >= 1; shape {}",
                shape),
    ]
    with tf.control_dependencies(checks):
      floats = tf.cast(images, tf.float32)
    sizes = tf.tile(shape[None, 1:3], [shape[0], 1])
    return self._serve(floats, sizes)

  @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
  def serve_image_bytes(self, image_bytes):
    """`serve_image_bytes`: string `[batch]` PNG/JPEG → outputs (module docstring)."""
    image_bytes = tf.ensure_shape(image_bytes, [None],
                                  name="image_bytes_must_be_a_string_vector_batch")
    count = tf.shape(image_bytes)[0]
    with tf.control_dependencies([_assert(
        tf.greater(count, 0), "serve_image_bytes: `image_bytes` holds no image")]):
      indices = tf.range(count)

    def decode(args):
      encoded, index = args
      prefix = tf.strings.substr(encoded, 0, 4)
      known = tf.reduce_any([tf.equal(tf.strings.substr(encoded, 0, len(magic)), magic)
                             for magic in _IMAGE_MAGIC])
      with tf.control_dependencies([_assert(
          known, "serve_image_bytes: image_bytes[{}] is not an encoded PNG or JPEG image "
          "(also accepted: GIF, BMP, WebP); it starts with {}", index, prefix)]):
        image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
      image = tf.ensure_shape(image, [None, None, 3])
      ragged = tf.RaggedTensor.from_tensor(tf.cast(image, tf.float32)[None], ragged_rank=2)
      return ragged[0], tf.shape(image)[:2]

    ragged, sizes = tf.map_fn(
        decode, (image_bytes, indices),
        fn_output_signature=(
            tf.RaggedTensorSpec([None, None, 3], tf.float32, ragged_rank=1),
            tf.TensorSpec([2], tf.int32)))
    images = ragged.to_tensor(default_value=self._options.pad_value)
    return self._serve(images, sizes)

  def signatures(self):
    """The dict to pass to `tf.saved_model.save(..., signatures=...)`."""
    return {DEFAULT_SIGNATURE: self.serve_images.get_concrete_function(),
            BYTES_SIGNATURE: self.serve_image_bytes.get_concrete_function()}

  # Graph pieces -----------------------------------------------------------------------

  def _serve(self, images, sizes):
    """Shared path. images: float32 `[b, H, W, 3]` padded with pad_value; sizes `[b, 2]`."""
    options = self._options
    batch_size = tf.shape(images)[1:3]
    if options.static_size is None:
      target = padded_length(batch_size, options.size_multiple, options.size_offset)
      model_input = self._pad(images, target)
      outputs = self._infer_fn(model_input)
      outputs = self._crop_and_mask(outputs, sizes, batch_size)
    else:
      model_input, fitted_sizes = self._fit_static(images, sizes)
      outputs = self._infer_fn(model_input)
      outputs = self._unfit_static(outputs, fitted_sizes, sizes, batch_size)
    outputs["image_height"] = sizes[:, 0]
    outputs["image_width"] = sizes[:, 1]
    return outputs

  def _pad(self, images, size):
    paddings = [[0, 0], [0, size[0] - tf.shape(images)[1]],
                [0, size[1] - tf.shape(images)[2]], [0, 0]]
    return tf.pad(images, paddings, constant_values=self._options.pad_value)

  def _infer(self, images):
    """Model, softmax and post-processing on `[b, h, w, 3]`; maps are `[b, h, w]`."""
    options = self._options
    predictions = self._model_fn(images)
    if not isinstance(predictions, dict) or any(
        key not in predictions for key in _REQUIRED_MODEL_OUTPUTS):
      keys = sorted(predictions) if isinstance(predictions, dict) else type(predictions)
      raise ValueError(f"the model must return a dict with {list(_REQUIRED_MODEL_OUTPUTS)} "
                       f"(a Panoptic-DeepLab model), got {keys}")
    probs = tf.nn.softmax(tf.cast(predictions["semantic_logits"], tf.float32), axis=-1)
    heatmap = tf.cast(predictions["center_heatmap"], tf.float32)
    offset = tf.cast(predictions["center_offset"], tf.float32)
    # Probabilities in, as in the evaluator, so the numbers match it bit for bit.
    result = ops.panoptic_inference(
        probs, heatmap, offset, thing_class_ids=list(options.thing_class_ids),
        label_divisor=options.label_divisor, ignore_label=options.ignore_label,
        center_threshold=options.center_threshold, nms_kernel=options.nms_kernel,
        top_k=options.top_k, stuff_area=options.stuff_area, thing_area=options.thing_area,
        semantic_is_probabilities=True)
    outputs = {key: result[key] for key in ("panoptic", "semantic", "instance",
                                            "instance_panoptic_ids", "instance_scores")}
    outputs["center_heatmap"] = heatmap[..., 0]
    if options.include_semantic_probs:
      outputs["semantic_probs"] = probs
    return outputs

  def _void_values(self):
    options = self._options
    return {"panoptic": options.ignore_label * options.label_divisor,
            "semantic": options.ignore_label, "instance": 0, "center_heatmap": 0.0,
            "semantic_probs": 0.0}

  def _crop_and_mask(self, outputs, sizes, batch_size):
    """Crops maps to `batch_size` and fills each image's outside with void values."""
    inside = ops.inside_images_mask(sizes[:, 0], sizes[:, 1], batch_size[0], batch_size[1])
    for key, void in self._void_values().items():
      if key not in outputs:
        continue
      value = outputs[key][:, :batch_size[0], :batch_size[1]]
      mask = inside if value.shape.rank == 3 else inside[..., None]
      outputs[key] = tf.where(mask, value, tf.cast(void, value.dtype))
    return outputs

  def _fit_static(self, images, sizes):
    """Pads (or shrinks, keeping the aspect ratio, then pads) each image to static_size."""
    height, width = self._options.static_size
    limit = tf.constant([height, width], tf.float32)

    def fit(args):
      image, size = args
      image = image[:size[0], :size[1]]
      scale = tf.minimum(1.0, tf.reduce_min(limit / tf.cast(size, tf.float32)))
      fitted = tf.minimum(
          tf.maximum(tf.cast(tf.round(tf.cast(size, tf.float32) * scale), tf.int32), 1),
          tf.constant([height, width]))
      image = tf.cond(scale < 1.0, lambda: tf.image.resize(image, fitted), lambda: image)
      image = tf.pad(image, [[0, height - fitted[0]], [0, width - fitted[1]], [0, 0]],
                     constant_values=self._options.pad_value)
      return tf.ensure_shape(image, [height, width, 3]), fitted

    return tf.map_fn(fit, (images, sizes),
                     fn_output_signature=(tf.TensorSpec([height, width, 3], tf.float32),
                                          tf.TensorSpec([2], tf.int32)))

  def _unfit_static(self, outputs, fitted_sizes, sizes, batch_size):
    """Undoes `_fit_static` per image, then pads each to `batch_size` with void values."""
    void = self._void_values()
    map_keys = [key for key in void if key in outputs]

    def unfit(args):
      maps, fitted, size = args
      restored = {}
      for key in map_keys:
        value = maps[key]
        squeeze = value.shape.rank == 2
        value = (value[..., None] if squeeze else value)[:fitted[0], :fitted[1]]
        method = "bilinear" if value.dtype == tf.float32 else "nearest"
        value = tf.cond(tf.reduce_all(tf.equal(fitted, size)), lambda v=value: v,
                        lambda v=value, m=method: tf.cast(tf.image.resize(v, size, m),
                                                          v.dtype))
        value = tf.pad(value, [[0, batch_size[0] - size[0]], [0, batch_size[1] - size[1]],
                               [0, 0]], constant_values=tf.cast(void[key], value.dtype))
        restored[key] = value[..., 0] if squeeze else value
      return restored

    signature = {key: tf.TensorSpec([None, None] + outputs[key].shape[3:].as_list(),
                                    outputs[key].dtype) for key in map_keys}
    restored = tf.map_fn(unfit, ({key: outputs[key] for key in map_keys}, fitted_sizes,
                                 sizes), fn_output_signature=signature)
    outputs.update(restored)
    return outputs


def _assert(condition, message, *values):
  """tf.debugging.Assert with one formatted message ("{}" placeholders for `values`)."""
  text = tf.strings.format(message, values) if values else message
  return tf.debugging.Assert(condition, [text])


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
                    stuff_area=None, **kwargs) -> ServingOptions:
  """ServingOptions from explicit values, falling back to a `DatasetInfo`'s fields."""
  values = {"thing_class_ids": thing_class_ids, "label_divisor": label_divisor,
            "ignore_label": ignore_label, "center_threshold": center_threshold,
            "nms_kernel": nms_kernel, "top_k": top_k, "stuff_area": stuff_area}
  for key, value in values.items():
    if value is None and dataset_info is not None:
      values[key] = getattr(dataset_info, key)
  missing = [key for key in ("thing_class_ids", "label_divisor") if values[key] is None]
  if missing:
    raise ValueError(f"export needs {missing}: pass them or a `dataset_info`")
  values = {key: value for key, value in values.items() if value is not None}
  return ServingOptions(**values, **kwargs)


def export_saved_model(model, output_dir, *, version=None, overwrite=False,
                       dataset_info=None, metadata=None, serving=None, **options) -> str:
  """Exports `model` with in-graph post-processing to `<output_dir>/<version>/`.

  Args:
    model: a Panoptic-DeepLab `tf_keras.Model` (see `PanopticServingModule`).
    output_dir: the TF Serving model base path.
    version: positive int; None = 1 + the largest existing numeric version.
    overwrite: replace an existing `<output_dir>/<version>` (otherwise an error).
    dataset_info: optional `deeplab_axial.data.datasets.DatasetInfo`; supplies the label
      space and post-processing defaults, and its class names/colours are recorded in the
      metadata JSON.
    metadata: optional JSON-able dict merged into the metadata JSON (e.g. the config).
    serving: a ready `ServingOptions` (then pass no `**options`).
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
  module = PanopticServingModule(model, serving)
  try:
    tf.saved_model.save(module, temp_dir, signatures=module.signatures())
    tf.io.gfile.makedirs(os.path.join(temp_dir, os.path.dirname(METADATA_FILE)))
    with tf.io.gfile.GFile(os.path.join(temp_dir, METADATA_FILE), "w") as f:
      json.dump(_metadata(serving, dataset_info, metadata, model), f, indent=1)
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


def _metadata(options, dataset_info, extra, model):
  metadata = {"format": "deeplab_axial_export/1", "model_name": model.name,
              "signatures": [DEFAULT_SIGNATURE, BYTES_SIGNATURE],
              "serving_options": options.to_json()}
  num_classes = model.output_shape["semantic_logits"][-1] if isinstance(
      model.output_shape, dict) else None
  metadata["num_classes"] = num_classes
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


# Checkpoint and config glue (used by trainer/export.py and trainer/predict.py) ----------


def restore_model(model, checkpoint) -> str:
  """Restores `model` from a trainer checkpoint (`tf.train.Checkpoint(model=...)`).

  Args:
    model: the freshly built model (same architecture as the trained one).
    checkpoint: a prefix or a model directory (see `resolve_checkpoint`).

  Returns:
    The checkpoint prefix restored.
  """
  prefix = resolve_checkpoint(checkpoint)
  try:
    status = tf.train.Checkpoint(model=model).restore(prefix).expect_partial()
    # Every model variable must come from the checkpoint: a silent fresh init would
    # export a random model.
    status.assert_existing_objects_matched()
  except (AssertionError, ValueError) as e:
    raise ValueError(f"checkpoint {prefix} does not match the model built from the config "
                     f"(is it the same architecture?): {e}") from e
  return prefix


def serving_options_from_config(config, dataset_info, *, static_size=None,
                                **overrides) -> ServingOptions:
  """ServingOptions from an ExperimentOptions `eval` section and the dataset descriptor.

  Args:
    config: a loaded `ExperimentOptions`.
    dataset_info: the `DatasetInfo` of `config.dataset.name`.
    static_size: (height, width) for the static-shape variant, or None.
    **overrides: further ServingOptions fields.
  """
  eval_options = config.eval
  options = {
      "dataset_info": dataset_info,
      "center_threshold": eval_options.center_threshold,
      "nms_kernel": eval_options.nms_kernel,
      "top_k": eval_options.top_k,
      "stuff_area": eval_options.stuff_area or dataset_info.stuff_area,
      "size_multiple": max(32, config.model.backbone.output_stride),
      "static_size": tuple(static_size) if static_size else None,
  }
  options.update(overrides)
  return serving_options(**options)


__all__ = ["BYTES_SIGNATURE", "DEFAULT_SIGNATURE", "METADATA_FILE", "PanopticServingModule",
           "ServingOptions", "export_saved_model", "load_metadata", "next_version",
           "padded_length", "resolve_checkpoint", "resolve_export_dir", "restore_model",
           "serving_options", "serving_options_from_config"]
