"""Counts the multiply-adds (M-Adds) of one forward pass of a tf_keras model.

Convention (the one of the Axial-DeepLab paper's M-Adds columns): only the multiply-adds of
weight layers and attention products are counted. A convolution or dense layer costs
(number of output positions) × (kernel size), i.e. every output value of a k×k conv from
c_in (per group) channels costs k·k·c_in multiply-adds; transposed convolutions count
input positions instead. Biases, batch norm, activations, pooling, resizing and residual
additions count 0.

Counted layers: every `Conv1D/2D/3D` (strided, dilated, grouped), `DepthwiseConv1D/2D`,
`SeparableConv1D/2D`, `Conv*Transpose` and `Dense`, wherever they sit — in functional
models, nested models or inside subclassed layers. A layer that defines
`compute_multiply_adds(input_shape)` is trusted for its whole cost: it is called with the
`tf.TensorShape` (or nested structure of shapes) of its actual first call argument, and
the layers it calls are not counted again. Axial-attention layers use this for their
einsums (qk, qr, kr, sv, sve) plus their projections.

The count runs no computation: the model is traced once by `tf.function` on a static input
signature while each counted layer's `call` is temporarily wrapped to record its shapes.
A layer called several times is counted for every call. Counts are per image (the
traced batch size is 1), matching `compute_multiply_adds`, which counts per example.
"""
import numpy as np
import tensorflow as tf
import tf_keras

_TRANSPOSED_CONVS = (tf_keras.layers.Conv1DTranspose, tf_keras.layers.Conv2DTranspose,
                     tf_keras.layers.Conv3DTranspose)
_WEIGHT_LAYERS = (tf_keras.layers.Conv1D, tf_keras.layers.Conv2D, tf_keras.layers.Conv3D,
                  tf_keras.layers.DepthwiseConv1D, tf_keras.layers.DepthwiseConv2D,
                  tf_keras.layers.SeparableConv1D, tf_keras.layers.SeparableConv2D,
                  tf_keras.layers.Dense)
# Weight-tensor attributes whose every element is one multiply-add per output position.
_KERNEL_ATTRIBUTES = ("kernel", "depthwise_kernel", "pointwise_kernel")


def _defines_own_count(layer):
  return callable(getattr(layer, "compute_multiply_adds", None))


def _layer_paths(model):
  """Maps id(layer) → "outer/inner/..." name path for every layer nested in `model`."""
  paths = {}

  def visit(layer, path):
    if id(layer) in paths:
      return
    paths[id(layer)] = (layer, path)
    # A layer with its own count is a leaf: its sub-layers are part of that count.
    if layer is not model and _defines_own_count(layer):
      return
    for sublayer in layer._flatten_layers(include_self=False, recursive=False):  # pylint: disable=protected-access
      visit(sublayer, f"{path}/{sublayer.name}")

  visit(model, model.name)
  return paths


def _static_size(shape, path, what):
  shape = tf.TensorShape(shape)
  if not shape.is_fully_defined():
    raise ValueError(f"count_multiply_adds: layer {path!r} has {what} shape {shape} with "
                     "unknown dimensions; pass a fully specified `input_shape`.")
  return int(np.prod(shape.as_list(), dtype=np.int64))


def _weight_layer_count(layer, path, inputs, outputs):
  """Multiply-adds of one call of a built-in convolution or dense layer."""
  kernel_size = sum(int(np.prod(getattr(layer, attribute).shape))
                    for attribute in _KERNEL_ATTRIBUTES if hasattr(layer, attribute))
  if isinstance(layer, _TRANSPOSED_CONVS):
    positions = _static_size(inputs.shape[:-1], path, "input")
  else:
    positions = _static_size(outputs.shape[:-1], path, "output")
  return positions * kernel_size


def count_multiply_adds(model, input_shape, per_layer=False):
  """Multiply-adds of one forward pass of `model` on an input of `input_shape`.

  Args:
    model: a `tf_keras.Model` (or layer) taking one image tensor.
    input_shape: `(height, width, channels)`, or `(batch, height, width, channels)` whose
      batch size is ignored: the count is always for one image.
    per_layer: also return the per-layer breakdown.

  Returns:
    The total as an int; with `per_layer=True`, a tuple `(total, breakdown)` where
    `breakdown` is a list of `(layer_path, multiply_adds)` in call order, one entry per
    counted call (paths look like "panoptic_deeplab/resnet50/res2_block1/conv2/conv").

  Raises:
    ValueError: if `input_shape` is not a fully known 3- or 4-tuple of positive ints, or a
      counted layer ends up with unknown dimensions.
  """
  shape = tuple(input_shape) if isinstance(input_shape, (tuple, list, tf.TensorShape)) else ()
  if len(shape) not in (3, 4) or any(
      isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1
      for size in shape):
    raise ValueError("count_multiply_adds: `input_shape` must be (height, width, channels) "
                     f"or (batch, height, width, channels) of positive ints, got {input_shape!r}.")
  shape = (1,) + tuple(int(size) for size in shape[-3:])
  dtype = model.inputs[0].dtype if getattr(model, "inputs", None) else tf.float32
  spec = tf.TensorSpec(shape, dtype)

  def trace():
    forward = tf.function(lambda images: model(images, training=False), autograph=False)
    forward.get_concrete_function(spec)

  if not model.built:
    trace()  # Builds lazily created sub-layers so they can be found and wrapped.

  records = []
  inside_own_count = [0]  # Depth of layers with their own count currently being called.

  def wrap(layer, path):
    original_call = layer.call
    own_count = _defines_own_count(layer)

    def counting_call(inputs, *args, **kwargs):
      if inside_own_count[0]:
        return original_call(inputs, *args, **kwargs)
      if own_count:
        input_shapes = tf.nest.map_structure(lambda tensor: tensor.shape, inputs)
        records.append((path, int(layer.compute_multiply_adds(input_shapes))))
        inside_own_count[0] += 1
        try:
          return original_call(inputs, *args, **kwargs)
        finally:
          inside_own_count[0] -= 1
      outputs = original_call(inputs, *args, **kwargs)
      records.append((path, _weight_layer_count(layer, path, inputs, outputs)))
      return outputs

    # An instance attribute shadows the class's `call`; Layer.__call__ looks up self.call.
    layer.__dict__["call"] = counting_call

  wrapped = []
  try:
    for layer, path in _layer_paths(model).values():
      if _defines_own_count(layer) or isinstance(layer, _WEIGHT_LAYERS):
        wrap(layer, path)
        wrapped.append(layer)
    trace()
  finally:
    for layer in wrapped:
      del layer.__dict__["call"]

  total = sum(count for _, count in records)
  return (total, records) if per_layer else total
