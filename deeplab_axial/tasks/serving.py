"""The serving side of every task: signatures, input decoding and the size rule.

`ServingModule` holds what all exported models share — the `serving_default` (uint8
images) and `serve_image_bytes` (encoded images) signatures, padding to the size rule or
fitting to a static size, and cropping/masking the outputs back to each image (see
`deeplab_axial.export.saved_model` for the full contract). Each task's serving module
subclasses it with `_infer` and `_void_values` (`tasks.panoptic.PanopticServingModule`,
`tasks.semantic.SemanticServingModule`) or, when the model does not run on the padded
images, `_run` too (`tasks.classification.ClassificationServingModule`: resize + centre
crop); `Task.serving_module(model, options)` returns it.
"""
import dataclasses
from typing import Optional, Tuple

import numpy as np
import tensorflow as tf

from deeplab_axial import ops
from deeplab_axial.tasks.post_processing import PostProcessingOptions

DEFAULT_SIGNATURE = "serving_default"
BYTES_SIGNATURE = "serve_image_bytes"

# Leading bytes of the formats tf.io.decode_image reads (WebP: "RIFF" .... "WEBP").
_IMAGE_MAGIC = (b"\x89PNG", b"\xff\xd8\xff", b"GIF8", b"BM", b"RIFF")


@dataclasses.dataclass(frozen=True)
class ServingOptions:
  """Everything the serving graph needs besides the model.

  Attributes:
    post_processing: the `PostProcessingOptions` the evaluator uses (label space and
      `panoptic_inference` options).
    size_multiple, size_offset: dynamic-mode padding to k * size_multiple + size_offset.
    static_size: (height, width) the model always runs at, or None (dynamic mode).
    pad_value: image padding value in [0, 255].
    include_semantic_probs: whether to output `semantic_probs`.
    jit_compile: XLA-compile the model + post-processing (static mode only).
  """
  post_processing: PostProcessingOptions
  size_multiple: int = 32
  size_offset: int = 1
  static_size: Optional[Tuple[int, int]] = None
  pad_value: float = 127.5
  include_semantic_probs: bool = True
  jit_compile: bool = False

  def __post_init__(self):
    if not isinstance(self.post_processing, PostProcessingOptions):
      raise TypeError(f"post_processing must be a PostProcessingOptions, got "
                      f"{type(self.post_processing).__name__}")
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
    """One flat dict (the post-processing fields beside the serving ones), as recorded in
    the export metadata for clients that read it without this package."""
    fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
              if f.name != "post_processing"}
    fields["static_size"] = list(self.static_size) if self.static_size else None
    post_processing = self.post_processing.as_dict()
    post_processing["thing_class_ids"] = list(self.post_processing.thing_class_ids)
    return {**post_processing, **fields}

  @classmethod
  def from_json(cls, fields):
    """The inverse of `to_json`."""
    names = {f.name for f in dataclasses.fields(PostProcessingOptions)}
    serving = {key: value for key, value in fields.items() if key not in names}
    if serving.get("static_size"):
      serving["static_size"] = tuple(serving["static_size"])
    return cls(PostProcessingOptions(**{key: value for key, value in fields.items()
                                        if key in names}), **serving)


def padded_length(length, multiple, offset):
  """Smallest `k * multiple + offset` (k >= 1) that is >= `length` (ints or int32 tensors)."""
  steps = (length - offset + multiple - 1) // multiple
  return tf.maximum(steps, 1) * multiple + offset


class ServingModule(tf.Module):
  """A `tf.Module` with the two serving signatures; a task adds its outputs.

  The shared part is the input side: uint8 batches or encoded image bytes, padding to the
  size rule (or fitting to `static_size`), and cropping/masking every output map back to
  each image. A task subclass implements `_infer` (model + post-processing on the padded
  batch) and `_void_values` (what each output map holds outside an image).

  Args:
    model: a `tf_keras.Model` on float32 images `[b, h, w, 3]` in [0, 255].
    options: a `ServingOptions`.
  """

  # `model.meta_architecture` of the task served (recorded in the export metadata).
  TASK = None

  def __init__(self, model, options: ServingOptions, name="serving"):
    super().__init__(name=name)
    # Only the variables are tracked, not the Keras model object: saving the model itself
    # would also serialize a trace of every layer's `call` (Keras SavedModel metadata),
    # which multiplies save and load time and is useless to a server.
    self._model_fn = lambda images: model(images, training=False)
    self.model_variables = list(model.variables)
    self._options = options
    # One tf.function shared by both signatures: they call it with the same input spec, so
    # the model and post-processing are traced (and stored) once. Here and in the
    # signatures, no autograph: tensor branches are tf.cond/tf.while_loop already.
    infer_fn = tf.function(self._infer, jit_compile=options.jit_compile or None,
                           autograph=False)
    # Held in a closure: tf.saved_model.save traces a tf.function attribute once more as a
    # function of the object graph (the whole model again, ~10 s for the demo's).
    self._infer_fn = lambda images: infer_fn(images)

  @property
  def options(self):
    return self._options

  # Signatures -------------------------------------------------------------------------

  @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8,
                                              name="images")], autograph=False)
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

  @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")],
               autograph=False)
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

  def signature_functions(self):
    """{signature name: its `tf.function`}: what to pass to
    `tf.saved_model.save(..., signatures=...)`, which then traces each once, inside its
    save context (functions traced before it are traced again there)."""
    return {DEFAULT_SIGNATURE: self.serve_images, BYTES_SIGNATURE: self.serve_image_bytes}

  def signatures(self):
    """{signature name: its concrete function} (traced now)."""
    return {name: function.get_concrete_function()
            for name, function in self.signature_functions().items()}

  # Graph pieces -----------------------------------------------------------------------

  def _serve(self, images, sizes):
    """Shared path. images: float32 `[b, H, W, 3]` padded with pad_value; sizes `[b, 2]`."""
    outputs = self._run(images, sizes)
    outputs["image_height"] = sizes[:, 0]
    outputs["image_width"] = sizes[:, 1]
    return outputs

  def _run(self, images, sizes):
    """`_infer` on the batch padded to the size rule (or fitted to static_size), its maps
    brought back to `[b, H, W, ...]` with void outside each image."""
    options = self._options
    batch_size = tf.shape(images)[1:3]
    if options.static_size is None:
      target = padded_length(batch_size, options.size_multiple, options.size_offset)
      model_input = self._pad(images, target)
      outputs = self._infer_fn(model_input)
      return self._crop_and_mask(outputs, sizes, batch_size)
    model_input, fitted_sizes = self._fit_static(images, sizes)
    outputs = self._infer_fn(model_input)
    return self._unfit_static(outputs, fitted_sizes, sizes, batch_size)

  def _model_outputs(self, images, required_keys):
    """The model's output dict on `images`, checked to hold `required_keys`."""
    predictions = self._model_fn(images)
    if not isinstance(predictions, dict) or any(
        key not in predictions for key in required_keys):
      keys = sorted(predictions) if isinstance(predictions, dict) else type(predictions)
      raise ValueError(f"the model must return a dict with {list(required_keys)} (a "
                       f"{self.TASK} model), got {keys}")
    return predictions

  def _pad(self, images, size):
    paddings = [[0, 0], [0, size[0] - tf.shape(images)[1]],
                [0, size[1] - tf.shape(images)[2]], [0, 0]]
    return tf.pad(images, paddings, constant_values=self._options.pad_value)

  def _infer(self, images):
    """Model and the task's post-processing on `[b, h, w, 3]`; returns the outputs with
    maps `[b, h, w(, c)]` (each map key must be in `_void_values()`) and any per-image
    vectors `[b, ...]`."""
    raise NotImplementedError

  def _void_values(self):
    """{map output name: the value of pixels outside an image}."""
    raise NotImplementedError

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


__all__ = ["BYTES_SIGNATURE", "DEFAULT_SIGNATURE", "ServingModule", "ServingOptions",
           "padded_length"]
