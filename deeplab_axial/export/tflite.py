"""TFLite conversion of the semantic path (fixed input size).

The converted model maps float32 images `[1, height, width, 3]` in [0, 255] to `semantic`
int32 `[1, height, width]` (argmax class) and `semantic_probs` float32
`[1, height, width, classes]`. With `include_panoptic=True` the panoptic post-processing
is added (`panoptic`, `instance` too). On TF 2.21 both variants convert to TFLite builtin
ops only (the post-processing's `map_fn` becomes a builtin WHILE, its segment sums
UNSORTED_SEGMENT_SUM), so no Flex delegate is needed; `allow_select_tf_ops=True` is there
for backbones whose ops have no builtin. Checked on a small Panoptic-DeepLab in
tests/export/test_tflite.py (outputs equal to TensorFlow's).
"""
import tensorflow as tf

from deeplab_axial.export import saved_model


def convert_semantic_model(model, output_path=None, input_size=(513, 513), *,
                           include_panoptic=False, serving=None, allow_select_tf_ops=False,
                           optimize=False):
  """Converts `model` (+ optionally post-processing) to a TFLite flatbuffer.

  Args:
    model: a Panoptic-DeepLab `tf_keras.Model` (float32 images in [0, 255]).
    output_path: where to write the `.tflite` file (None: only return the bytes).
    input_size: (height, width) of the fixed input.
    include_panoptic: also output `panoptic`, `instance` (needs `serving` options).
    serving: `ServingOptions` for the post-processing.
    allow_select_tf_ops: allow TF ops missing from TFLite (Flex delegate needed).
    optimize: dynamic-range int8 weight quantization (`tf.lite.Optimize.DEFAULT`).

  Returns:
    The flatbuffer bytes.

  Raises:
    ValueError: for a bad `input_size`, or when conversion needs ops that are not
      allowed (the converter's message lists them).
  """
  if len(tuple(input_size)) != 2 or not all(int(v) > 0 for v in input_size):
    raise ValueError(f"input_size must be (height, width) positive ints, got {input_size!r}")
  if include_panoptic and serving is None:
    raise ValueError("include_panoptic=True needs `serving` (ServingOptions)")
  height, width = (int(v) for v in input_size)
  module = tf.Module()
  module.model_variables = list(model.variables)
  spec = tf.TensorSpec([1, height, width, 3], tf.float32, name="images")

  @tf.function(input_signature=[spec], autograph=False)
  def semantic(images):
    logits = tf.cast(model(images, training=False)["semantic_logits"], tf.float32)
    return {"semantic": tf.argmax(logits, axis=-1, output_type=tf.int32),
            "semantic_probs": tf.nn.softmax(logits, axis=-1)}

  @tf.function(input_signature=[spec], autograph=False)
  def panoptic(images):
    serving_module = saved_model.PanopticServingModule(model, serving)
    # pylint: disable=protected-access
    outputs = serving_module._infer(images)
    return {key: outputs[key] for key in ("panoptic", "semantic", "instance",
                                          "semantic_probs") if key in outputs}

  function = panoptic if include_panoptic else semantic
  converter = tf.lite.TFLiteConverter.from_concrete_functions(
      [function.get_concrete_function()], module)
  converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS] + (
      [tf.lite.OpsSet.SELECT_TF_OPS] if allow_select_tf_ops else [])
  if optimize:
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
  try:
    flatbuffer = converter.convert()
  except Exception as e:  # pylint: disable=broad-except
    # The converter raises its own ConverterError type; re-raise with the context.
    raise ValueError(f"TFLite conversion failed (include_panoptic={include_panoptic}, "
                     f"allow_select_tf_ops={allow_select_tf_ops}): {e}") from e
  if output_path:
    with tf.io.gfile.GFile(output_path, "wb") as f:
      f.write(flatbuffer)
  return flatbuffer


__all__ = ["convert_semantic_model"]
