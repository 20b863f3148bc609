"""How Keras traces our layers: `graph_call`, `OutputSpecFromShape`, `call_nested`.

`graph_call` marks a layer's `call` as graph code that autograph leaves as written.
Keras runs the `call` of every subclassed layer through autograph, which parses and
rewrites that function and everything it calls (once per process), then traces the
rewritten code, which wraps every `if` and call in a dispatcher. Our layers branch on
tensors only through `tf.cond` / `tf.while_loop` / `smart_cond`, so the rewrite adds
nothing. Measured on the shapes demo model (33x33 crops, 2 training steps and an
evaluation, AVX2 machine): the rewrite was ~40% of building the model, and the whole
run took 91 s instead of 105-113 s without it.

`tf.autograph.experimental.do_not_convert` alone would hide `call`'s signature from
Keras (it would then pass `mask=` to layers that take none); re-attaching the original
as the decorator's target keeps `training` and the argument list visible.

Building a functional model, Keras infers each layer's output by tracing its `call` on
placeholders in a scratch graph (`Layer._infer_output_signature`), and a nested model's
by tracing every layer of it again. `call_nested` skips the backbone's second trace
inside the task model and `OutputSpecFromShape` the axial blocks' scratch traces: the
shapes demo model builds in 1.9 s instead of 7.2 s (`benchmarks/build_time.py`, AVX2).
"""
import tensorflow as tf
from tf_keras.src.engine import keras_tensor


def graph_call(call):
  """Decorator for a layer's `call`: not converted by autograph, signature kept."""
  return tf.__internal__.decorator.make_decorator(
      call, tf.autograph.experimental.do_not_convert(call))


class OutputSpecFromShape:
  """Mixin (before `tf_keras.layers.Layer` in the bases) for a layer whose `build` creates
  every weight, its sublayers' included, and whose `compute_output_shape` is exact.

  Called on a KerasTensor of unknown height and width (`[batch, None, None, channels]`,
  functional model construction), the layer is built and its output spec is taken from
  `compute_output_shape` and the compute dtype instead of a scratch trace of `call`.
  With a known height or width `call` is traced as usual, so that it can check them
  (e.g. a global span shorter than the axis).
  """

  def _infer_output_signature(self, inputs, args, kwargs, input_masks):
    if (args or set(kwargs) - {"training"} or input_masks is not None
        or not isinstance(inputs, keras_tensor.KerasTensor) or inputs.shape.rank != 4
        or inputs.shape[1] is not None or inputs.shape[2] is not None):
      return super()._infer_output_signature(inputs, args, kwargs, input_masks)
    # Built as Keras' scratch trace builds it: the weight names follow the layer's scope.
    with tf.__internal__.FuncGraph(f"{self.name}_scratch_graph").as_default():
      with tf.name_scope(self._name_scope()):
        self._maybe_build(keras_tensor.keras_tensor_to_placeholder(inputs))
    self._set_save_spec(inputs, args, kwargs)
    return keras_tensor.keras_tensor_from_type_spec(
        tf.TensorSpec(self.compute_output_shape(inputs.shape), self.compute_dtype))


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
  """`model(inputs)` for a functional `model` (e.g. a backbone inside a task model).

  When `inputs` has exactly `model`'s own input spec, `model`'s own output specs are
  the answer already: Keras gets those and records the call as usual (one node, the same
  weights, the same graph) without tracing `model`'s layers again.

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
