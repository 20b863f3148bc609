"""Recomputing a layer's activations in the backward pass (gradient checkpointing).

`recompute_grad(layer, forward, inputs)` runs `forward(inputs)` under `tf.recompute_grad`:
the gradient tape keeps only `inputs` (and the variables), and the backward pass runs
`forward` again to get the activations its gradients need, as DeepLab2's
`recompute_grad` layer does. A training step then holds the activations of one
recomputed layer at a time instead of every layer's, for about one more forward pass of
compute.

Batch norm: the recomputation runs in training mode (it must reproduce the forward pass,
so it normalizes with the same batch statistics) but must not move the moving
statistics a second time. Every layer with moving statistics inside the recomputed
layer therefore has a boolean attribute `update_statistics` (`PausableBatchNormalization`
below, `axial_attention.SimilarityBatchNormalization`) that `statistics_paused` sets to
False while the backward pass recomputes; the forward pass updates them as usual, so a
step with recomputation leaves exactly the statistics of a step without.
"""
import contextlib

import tensorflow as tf
import tf_keras

# The attribute of a layer with moving statistics that turns their updates on and off.
UPDATE_SWITCH = "update_statistics"


@tf_keras.saving.register_keras_serializable(package="deeplab_axial")
class PausableBatchNormalization(tf_keras.layers.BatchNormalization):
  """`tf_keras.layers.BatchNormalization` whose moving-statistics updates can be paused.

  With `update_statistics = False` (set by `statistics_paused`, a runtime switch, not
  configuration) training mode still normalizes with the batch statistics but leaves
  the moving mean and variance alone. Same arguments, variables and variable names as
  the Keras layer, so checkpoints of either load into the other.
  """

  def __init__(self, *args, **kwargs):
    super().__init__(*args, **kwargs)
    self.update_statistics = True

  def add_update(self, updates):
    # tf_keras batch normalization adds nothing but its moving mean/variance updates.
    if self.update_statistics:
      super().add_update(updates)


def _statistics_layers(layer):
  """`layer` and every Keras layer inside it that holds moving statistics."""
  modules = [layer] + list(layer.submodules)
  return [module for module in modules if isinstance(module, tf_keras.layers.Layer)
          and hasattr(module, "moving_mean")]


@contextlib.contextmanager
def statistics_paused(layer):
  """Inside the block no layer within `layer` updates its moving statistics.

  Args:
    layer: a built Keras layer.

  Raises:
    ValueError: a layer inside `layer` has moving statistics but no `update_statistics`
      switch (its updates could not be paused, so recomputation would apply them twice).
  """
  layers = _statistics_layers(layer)
  fixed = [inner.name for inner in layers if not hasattr(inner, UPDATE_SWITCH)]
  if fixed:
    raise ValueError(f"layer {layer.name!r} cannot be recomputed: {', '.join(fixed)} "
                     f"update moving statistics without an `{UPDATE_SWITCH}` switch "
                     "(use recompute.PausableBatchNormalization)")
  previous = [getattr(inner, UPDATE_SWITCH) for inner in layers]
  for inner in layers:
    setattr(inner, UPDATE_SWITCH, False)
  try:
    yield
  finally:
    for inner, value in zip(layers, previous):
      setattr(inner, UPDATE_SWITCH, value)


def recompute_grad(layer, forward, inputs):
  """`forward(inputs)`, its activations recomputed in the backward pass.

  Args:
    layer: the built layer whose sublayers `forward` calls; its moving statistics are
      updated by the forward pass only.
    forward: a float tensor -> tensor function, deterministic (no dropout): the
      recomputation must reproduce the forward pass exactly.
    inputs: the float tensor given to `forward`.

  Returns:
    `forward(inputs)`.
  """
  calls = []

  def run(tensor):
    # tf.recompute_grad calls `run` once for the forward pass, then again for each
    # backward pass; only the first call may update the moving statistics.
    first = not calls
    calls.append(first)
    if first:
      return forward(tensor)
    with statistics_paused(layer):
      return forward(tensor)

  return tf.recompute_grad(run)(inputs)


__all__ = ["PausableBatchNormalization", "UPDATE_SWITCH", "recompute_grad",
           "statistics_paused"]
