"""`call_nested`: a functional model called inside another, without re-tracing its layers.

Keras infers the outputs of a model called on a symbolic input by running every layer of
it again in a scratch graph (`Layer._infer_output_signature`). For a backbone inside
Axial-DeepLab that is the whole backbone traced a second time: 5.8 of the 13 s of
building the shapes demo model. When the input has exactly the nested model's own input
spec, its own output specs are the answer already, so `call_nested` hands those to Keras
and lets it record the call as usual (one node, the same weights, the same graph).
"""
import tensorflow as tf
from tf_keras.src.engine import keras_tensor


def _same_spec(inputs, model):
  """Whether `inputs` is a dense KerasTensor of the shape and dtype of `model`'s input."""
  own = model.inputs
  if len(own) != 1 or not isinstance(inputs, keras_tensor.KerasTensor):
    return False
  spec, own_spec = inputs.type_spec, own[0].type_spec
  return (isinstance(spec, tf.TensorSpec) and isinstance(own_spec, tf.TensorSpec)
          and spec.dtype == own_spec.dtype and spec.shape.rank is not None
          and spec.shape.as_list() == own_spec.shape.as_list())


def call_nested(model, inputs):
  """`model(inputs)` for a functional `model` and a `tf_keras.Input`-derived `inputs`.

  Args:
    model: a functional `tf_keras.Model` with one input.
    inputs: a KerasTensor, e.g. `[batch, height, width, 3]`.

  Returns:
    `model`'s outputs on `inputs`, as `model(inputs)` returns them.
  """
  if not _same_spec(inputs, model):
    return model(inputs)

  def own_output_specs(call_inputs, args, kwargs, input_masks):
    del input_masks  # the backbones take and make no masks
    model._set_save_spec(call_inputs, args, kwargs)  # pylint: disable=protected-access
    return tf.nest.map_structure(
        lambda output: keras_tensor.keras_tensor_from_type_spec(output.type_spec),
        model._nested_outputs)  # pylint: disable=protected-access

  # An instance attribute shadows the method for this call only; set through __dict__ so
  # that Keras' attribute tracking does not record it.
  model.__dict__["_infer_output_signature"] = own_output_specs
  try:
    return model(inputs)
  finally:
    del model.__dict__["_infer_output_signature"]
