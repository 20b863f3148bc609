"""Recomputing a layer's activations in the backward pass (gradient checkpointing).

`recompute_grad(layer, forward, inputs)` runs `forward(inputs)` under `tf.recompute_grad`:
the gradient tape keeps only `inputs` (and the variables), and the backward pass runs
`forward` again to get the activations its gradients need, as DeepLab2's
`recompute_grad` layer does. A training step then holds the activations of one
recomputed layer at a time instead of every layer's, for about one more forward pass of
compute.

Batch norm: the recomputation runs in training mode (it must reproduce the forward pass,
so it normalizes with the same batch statistics) but must not move the moving
statistics a second time. Layers with moving statistics that may sit in a recomputed
layer (`PausableBatchNormalization` below, `axial_attention.SimilarityBatchNormalization`)
skip their updates while `statistics_updates_paused()` is true, i.e. inside
`statistics_paused()`, which the backward pass enters to recompute; the forward pass
updates them as usual, so a step with recomputation leaves exactly the statistics of a
step without. The pause is per thread, not a layer attribute: `MirroredStrategy` traces
its replicas in parallel threads over the same layers, and one replica's recomputation
must not pause another replica's forward pass.
"""
import tensorflow as tf
import tf_keras

from deeplab_axial.layers import fused_attention
from deeplab_axial.layers import replica_statistics
from deeplab_axial.layers import scoped_flag

# Marks a layer class whose moving-statistics updates obey `statistics_paused`.
PAUSABLE_MARK = "pauses_in_recomputation"

_PAUSE = scoped_flag.ScopedFlag()


def statistics_updates_paused():
  """True inside `statistics_paused` on this thread: skip moving-statistics updates."""
  return _PAUSE.is_set()


def statistics_paused():
  """Within the block (this thread) pausable layers keep their moving statistics."""
  return _PAUSE.scope()


@tf_keras.saving.register_keras_serializable(package="deeplab_axial")
class PausableBatchNormalization(tf_keras.layers.BatchNormalization):
  """`tf_keras.layers.BatchNormalization` whose moving-statistics updates can be paused.

  Inside `statistics_paused()` training mode still normalizes with the batch statistics
  but leaves the moving mean and variance alone. Same arguments, variables and variable
  names as the Keras layer, so checkpoints of either load into the other.
  `synchronized=True` takes its statistics from `replica_statistics.replica_moments`.

  The attention layer normalizes its qkv projection and output with kernel ops that
  fuse the norm with a split or a sum where the kernels run (`kernel_normalizes`),
  updating this layer's moving statistics as the Keras layer does
  (`update_moving_statistics`). A plain batch norm on the kernel measured no faster
  than `FusedBatchNormV3` (benchmarks/README.md), so the layer's own call stays Keras.
  """

  pauses_in_recomputation = True

  def __init__(self, *args, **kwargs):
    super().__init__(*args, **kwargs)
    if self.synchronized:
      replica_statistics.synchronize(self)

  def kernel_normalizes(self, dtype, training):
    """Whether training-mode batch statistics of this layer run on the CPU kernel ops.

    For a trainable, unsynchronized layer with the fused layout (the last axis, gamma
    and beta, no renorm or virtual batches) in a trace where the kernels run; the
    kernel ops compute what `FusedBatchNormV3` does (kernels/batch_norm.cc).
    """
    return bool(self.trainable and self.fused and not self.synchronized
                and self.center and self.scale
                and fused_attention.usable(dtype, training))

  def update_moving_statistics(self, mean, variance, rows):
    """The Keras fused path's moving-average update, unless paused.

    Args:
      mean: the batch mean `[channels]`.
      variance: the batch variance `[channels]`: biased over `rows` rows, which enters
        the average Bessel-corrected as in `FusedBatchNormV3`; or, with rows None,
        already corrected.
      rows: None or the number of rows the statistics are over (scalar int tensor).
    """
    if statistics_updates_paused():
      return
    if rows is not None:
      rows = tf.cast(rows, variance.dtype)
      variance = variance * rows / tf.maximum(rows - 1.0, 1.0)
    for variable, value in ((self.moving_mean, mean), (self.moving_variance, variance)):
      variable.assign(self.momentum * variable + (1.0 - self.momentum) * value)

  def add_update(self, updates):
    # tf_keras batch normalization adds nothing but its moving mean/variance updates.
    if not statistics_updates_paused():
      super().add_update(updates)


def _statistics_layers(layer):
  """`layer` and every Keras layer inside it that holds moving statistics."""
  modules = [layer] + list(layer.submodules)
  return [module for module in modules if isinstance(module, tf_keras.layers.Layer)
          and hasattr(module, "moving_mean")]


def check_pausable(layer):
  """Raises ValueError when `layer` cannot be recomputed because of its batch norms.

  A batch norm inside it must pause its moving-statistics updates in the recomputation
  (the `pauses_in_recomputation` mark), and must not synchronize its batch statistics
  across replicas: the recomputation would all-reduce them again inside the backward
  pass, where the replicas of a Mirrored strategy wait on each other without end.
  """
  statistics_layers = _statistics_layers(layer)
  fixed = [inner.name for inner in statistics_layers
           if not getattr(inner, PAUSABLE_MARK, False)]
  if fixed:
    raise ValueError(f"layer {layer.name!r} cannot be recomputed: {', '.join(fixed)} "
                     "update moving statistics that a recomputation cannot pause (use "
                     "recompute.PausableBatchNormalization)")
  synchronized = [inner.name for inner in statistics_layers
                  if getattr(inner, "synchronized", False)]
  if synchronized:
    raise ValueError(
        f"layer {layer.name!r} cannot be recomputed: {', '.join(synchronized)} "
        "synchronize batch statistics across replicas, which would all-reduce again in "
        "the backward pass and stall the replicas; use per-replica batch norm "
        "(train.sync_batch_norm: false, or synchronized_batch_norm=False) or no "
        "recomputation (model.backbone.recompute: false)")


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
  check_pausable(layer)
  calls = []

  def run(tensor):
    # tf.recompute_grad calls `run` once for the forward pass, then again for each
    # backward pass; only the first call may update the moving statistics.
    first = not calls
    calls.append(first)
    if first:
      return forward(tensor)
    with statistics_paused():
      return forward(tensor)

  return tf.recompute_grad(run)(inputs)


__all__ = ["PAUSABLE_MARK", "PausableBatchNormalization", "check_pausable",
           "recompute_grad", "statistics_paused", "statistics_updates_paused"]
