"""Test-time augmentation: one implementation for every dense-prediction task.

A model callable maps images float32 `[batch, height, width, 3]` in [0, 255] to a dict with
`semantic_logits [batch, h, w, classes]` and, for Panoptic-DeepLab, `center_heatmap
[batch, h, w, 1]` and `center_offset [batch, h, w, 2]` ((dy, dx) in pixels of its input).
"""
import tensorflow as tf

SEMANTIC_KEYS = ("semantic_logits",)
PANOPTIC_KEYS = ("semantic_logits", "center_heatmap", "center_offset")
# Model output -> averaged output name (logits are averaged as softmax probabilities).
_AVERAGED_NAMES = {"semantic_logits": "semantic_probs", "center_heatmap": "center_heatmap",
                   "center_offset": "center_offset"}


def _scaled_size(input_size, scale):
  """Rounded `input_size * scale` as int32, at least 1 pixel each."""
  size = tf.cast(input_size, tf.float32) * scale
  return tf.maximum(tf.cast(tf.round(size), tf.int32), 1)


def _model_outputs(model_fn, images, keys):
  outputs = model_fn(images)
  missing = [key for key in keys if key not in outputs]
  if missing:
    raise ValueError(f"model_fn outputs lack {missing}; got keys {sorted(outputs)}")
  return {key: tf.cast(outputs[key], tf.float32) for key in keys}


def _unaugment(outputs, mirrored, scale, input_size, scaled_size):
  """One copy's outputs back at the input's frame: unflipped, resized, offsets rescaled."""
  restored = {}
  for key, value in outputs.items():
    if mirrored:
      value = tf.reverse(value, axis=[2])
      if key == "center_offset":
        value *= tf.constant([1.0, -1.0])  # dx changes sign in a mirror
    if scale != 1.0:
      value = tf.image.resize(value, input_size)
      if key == "center_offset":
        # Offsets are in pixels of the scaled input; convert them to input pixels.
        value *= tf.cast(input_size, tf.float32) / tf.cast(scaled_size, tf.float32)
    if key == "semantic_logits":
      value = tf.nn.softmax(value, axis=-1)
    restored[_AVERAGED_NAMES[key]] = value
  return restored


def predict_with_tta(model_fn, images, scales=(1.0,), flip=False, keys=PANOPTIC_KEYS):
  """Runs `model_fn` over rescaled (and mirrored) copies and averages at input resolution.

  For each scale the images are bilinearly resized to `round(size * scale)`; the model's
  outputs are resized back to the input size, offsets multiplied by `input size / scaled
  size` per axis, and logits turned into softmax probabilities. Mirrored copies are
  flipped back and their dx negated. Everything is then averaged over all
  `len(scales) * (2 if flip else 1)` copies.

  Args:
    model_fn: callable, images -> dict (see the module docstring).
    images: float `[batch, height, width, 3]` in [0, 255]; height/width may be dynamic.
    scales: positive scale factors.
    flip: whether to add horizontally mirrored copies.
    keys: the model outputs to average: `PANOPTIC_KEYS` or `SEMANTIC_KEYS`.

  Returns:
    Dict of float32 tensors at input resolution: `semantic_probs [b, h, w, classes]` and,
    with `PANOPTIC_KEYS`, `center_heatmap [b, h, w, 1]`, `center_offset [b, h, w, 2]`.

  Raises:
    ValueError: for empty or non-positive `scales`, images not `[b, h, w, 3]` or a model
      lacking one of `keys`.
  """
  scales = tuple(float(s) for s in scales)
  if not scales or min(scales) <= 0:
    raise ValueError(f"scales must be a non-empty sequence of positive numbers, got {scales}")
  images = tf.cast(tf.convert_to_tensor(images), tf.float32)
  if images.shape.rank != 4 or images.shape[-1] != 3:
    raise ValueError(f"images must have shape [batch, height, width, 3], got {images.shape}")
  input_size = tf.shape(images)[1:3]
  totals = None
  for scale in scales:
    scaled_size = input_size if scale == 1.0 else _scaled_size(input_size, scale)
    scaled = images if scale == 1.0 else tf.image.resize(images, scaled_size)
    for mirrored in ((False, True) if flip else (False,)):
      outputs = _model_outputs(model_fn, tf.reverse(scaled, axis=[2]) if mirrored
                               else scaled, keys)
      copy = _unaugment(outputs, mirrored, scale, input_size, scaled_size)
      totals = copy if totals is None else {k: totals[k] + copy[k] for k in totals}
  count = float(len(scales) * (2 if flip else 1))
  return {key: value / count for key, value in totals.items()}


__all__ = ["PANOPTIC_KEYS", "SEMANTIC_KEYS", "predict_with_tta"]
