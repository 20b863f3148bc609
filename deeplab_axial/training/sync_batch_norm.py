"""Cross-replica (synchronized) batch normalization for an already-built model.

Models are built with per-replica batch norm (the layers' default); the trainer turns
synchronization on afterwards when it runs on several replicas, so one model definition
serves single-device training, multi-replica training and export alike.
"""
from absl import logging
import tensorflow as tf
import tf_keras

from deeplab_axial.layers import axial_attention
from deeplab_axial.layers import recompute
from deeplab_axial.layers import replica_statistics


def configure_sync_batch_norm(model, strategy, enabled, jit_compile=False):
  """Applies `train.sync_batch_norm`: synchronizes `model`'s batch norms when it matters.

  Synchronization is only enabled with more than one replica. With `jit_compile` on a
  Mirrored/MultiWorkerMirrored strategy the replica all-reduce would have to run inside
  the XLA-compiled gradient function, which those strategies do not support on CPU
  (`merge_call` inside a compiled function), so batch norms then stay per-replica and
  a warning says so.

  Synchronization is refused for a model with recomputed axial blocks
  (`model.backbone.recompute`, see `recompute.check_pausable`).

  Args:
    model: the built model (created under `strategy.scope()`).
    strategy: the `tf.distribute.Strategy` training runs under.
    enabled: the `train.sync_batch_norm` config value.
    jit_compile: the `train.jit_compile` config value.

  Returns:
    True when the model's batch norms now synchronize across replicas.

  Raises:
    ValueError: `model` recomputes blocks and synchronization is enabled.
  """
  if not enabled or strategy.num_replicas_in_sync == 1:
    return False
  if jit_compile and not isinstance(strategy, tf.distribute.TPUStrategy):
    logging.warning("train.sync_batch_norm is ignored with train.jit_compile on %s: the "
                    "cross-replica all-reduce cannot run inside the XLA-compiled step; "
                    "batch statistics stay per replica.", type(strategy).__name__)
    return False
  count = enable_sync_batch_norm(model)
  for layer in _layers_and_self(model):
    if getattr(layer, "recompute", False) is True:
      recompute.check_pausable(layer)
  logging.info("Synchronized %d batch normalization layers across %d replicas.", count,
               strategy.num_replicas_in_sync)
  return True


def enable_sync_batch_norm(model):
  """Makes every batch norm in `model` use statistics of the whole global batch.

  In training mode each `tf_keras` batch normalization (including those nested in
  sub-models and custom layers) then takes its mean and variance over the replicas of the
  current `tf.distribute` replica context (`replica_statistics.synchronize`: per-replica
  two-pass moments, one all-gather, combined without cancellation), and each
  `SimilarityBatchNormalization` of the axial-attention layers all-reduces its sums, so
  the normalized outputs and the moving statistics equal those of one device seeing the
  global batch. Outside a multi-replica context the layers behave exactly as before.

  The fused kernel (per-replica moments) is switched off; inference then uses the
  equivalent unfused formula with the moving statistics. One visible difference: the
  fused kernel adds the unbiased batch variance to the moving variance, the unfused path
  the biased one (a factor (n - 1) / n, n = pixels per channel in the global batch).

  Must run before the training step is traced: `tf.function`s traced earlier keep the
  per-replica behaviour.

  Args:
    model: a built `tf_keras.Model` (or layer).

  Returns:
    The number of batch-normalization layers switched to synchronized statistics.

  Raises:
    ValueError: `model` is not a built Keras layer, or a batch norm layer uses ghost
      batches (`virtual_batch_size`), whose per-ghost-batch statistics are by design not
      global-batch statistics.
  """
  if not isinstance(model, tf_keras.layers.Layer) or not model.built:
    raise ValueError(f"enable_sync_batch_norm needs a built tf_keras model, got "
                     f"{type(model).__name__} (built={getattr(model, 'built', None)})")
  count = 0
  for layer in _layers_and_self(model):
    if isinstance(layer, tf_keras.layers.BatchNormalization):
      if layer.virtual_batch_size is not None:
        raise ValueError(f"batch norm layer {layer.name!r} has virtual_batch_size="
                         f"{layer.virtual_batch_size}; synchronized statistics need "
                         "virtual_batch_size=None")
      replica_statistics.synchronize(layer)
      count += 1
    elif isinstance(layer, axial_attention.SimilarityBatchNormalization):
      layer.synchronized = True
      count += 1
  return count


def _layers_and_self(model):
  """`model` and every Keras layer reachable from it (each once)."""
  yield model
  for module in model.submodules:
    if isinstance(module, tf_keras.layers.Layer):
      yield module
