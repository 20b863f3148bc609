"""The one distributed evaluation loop, for every task (`deeplab_axial.tasks`).

The host iterates the task's eval dataset in global batches (the whole split, on every
worker), keeps string features (`image_id`, `image_name`) on the host, pads the last batch
with invalid images (`valid = False`) to the full global batch, and hands each replica its
slice of the numeric features. So:

* every replica runs the same static per-replica batch (XLA/TPU-friendly), and no image is
  dropped or counted twice whatever the split size;
* nothing that crosses `strategy.run` is a string, and the replicated step makes no host
  call; with `jit_compile=True` the prediction (`TaskEvaluator.predict`: model, TTA,
  post-processing) is XLA-compiled, the metric-variable updates run next to it (as the
  trainer applies gradients outside its compiled function: XLA on CPU/GPU cannot update
  a replica's variables from a function shared by the replicas);
* the per-image outputs the host needs (e.g. panoptic maps and instance scores for COCO
  AP) are gathered from every replica of every worker with `strategy.gather`, so host-side
  metrics see the whole split, exactly as a single replica would.

Streaming metrics (PQ, mIoU, boundary F, top-k) live in the replicas' metric variables,
created under `strategy.scope()`, and sum across replicas and workers when read. Reading
them is collective under MultiWorkerMirroredStrategy: every worker runs the same
evaluation and gets the same results. The replicas also count the valid images they
evaluated (`num_images` in the results), which shows that no image was dropped or counted
twice.
"""
import numpy as np
import tensorflow as tf
import tf_keras


def global_eval_batch_size(batch_size, strategy):
  """`batch_size` rounded up to a multiple of the number of replicas (>= 1 per replica)."""
  replicas = strategy.num_replicas_in_sync
  return max(1, -(-int(batch_size) // replicas)) * replicas


def numeric_features(batch):
  """The features of a batch dict that may enter `strategy.run` (no strings)."""
  return {key: value for key, value in batch.items() if value.dtype != tf.string}


def _pad_to(batch, size):
  """Pads every feature's batch axis to `size` with zeros; adds `valid [size]`."""
  count = int(next(iter(batch.values())).shape[0])
  if count > size:
    raise ValueError(f"an eval batch holds {count} images, more than the global eval batch "
                     f"{size}")
  padded = {}
  for key, value in batch.items():
    padding = tf.zeros([size - count] + value.shape[1:].as_list(), value.dtype)
    padded[key] = tf.concat([value, padding], axis=0)
  padded["valid"] = tf.range(size) < count
  return padded, count


class EvalLoop:
  """Runs a `TaskEvaluator` over datasets under `strategy` (see the module docstring).

  Args:
    strategy: a `tf.distribute.Strategy`; the evaluator's metrics were created under its
      scope.
    evaluator: a `deeplab_axial.tasks.TaskEvaluator`.
    global_batch_size: images per global batch (a multiple of the number of replicas,
      see `global_eval_batch_size`); the dataset's batches must not be larger.
    jit_compile: XLA-compile each replica's prediction (model, TTA, post-processing).
  """

  def __init__(self, strategy, evaluator, global_batch_size, jit_compile=False):
    if global_batch_size % strategy.num_replicas_in_sync:
      raise ValueError(f"global eval batch {global_batch_size} is not divisible by the "
                       f"{strategy.num_replicas_in_sync} replicas")
    self.strategy = strategy
    self.evaluator = evaluator
    self.global_batch_size = global_batch_size
    self.per_replica_batch_size = global_batch_size // strategy.num_replicas_in_sync
    self._predict = (tf.function(evaluator.predict, jit_compile=True, autograph=False)
                     if jit_compile else evaluator.predict)
    with strategy.scope():
      # float64 counts exactly up to 2**53 images.
      self._num_images = tf_keras.metrics.Sum(name="num_images", dtype=tf.float64)
    # Without autograph: the step branches on tensors only through tf.cond/tf.while_loop,
    # and rewriting it (models, post-processing, metrics and what they call) took ~40% of
    # an evaluation of the shapes demo (18 of 45 s, 87 functions converted).
    self._step = tf.function(self._distributed_step, reduce_retracing=True,
                             autograph=False)

  def _distributed_step(self, batch, with_predictions):
    # `with_predictions` is a Python bool: one trace with and one without.
    outputs = self.strategy.run(self._replica_step, args=(batch, with_predictions))
    return {key: self.strategy.gather(value, axis=0) for key, value in outputs.items()}

  def _replica_step(self, batch, with_predictions):
    self._num_images.update_state(tf.reduce_sum(tf.cast(batch["valid"], tf.float64)))
    return self.evaluator.update(batch, self._predict(batch), with_predictions)

  def distribute(self, numeric):
    """Each replica's slice of a padded global batch of numeric features."""
    size = self.per_replica_batch_size

    def replica_slice(context):
      start = context.replica_id_in_sync_group * size
      return {key: value[start:start + size] for key, value in numeric.items()}

    return self.strategy.experimental_distribute_values_from_function(replica_slice)

  def trace_step(self, numeric_spec, with_predictions=False):
    """Traces one evaluation step (distribution, `predict`, `update`, gather) for a
    padded global batch of `numeric_spec` ({name: `tf.TensorSpec`}, `valid` included)
    without running it. Returns the concrete function."""
    def step(numeric):
      return self._step(self.distribute(numeric), with_predictions)

    return tf.function(step, autograph=False).get_concrete_function(numeric_spec)

  def evaluate(self, dataset, num_steps=None, prediction_writer=None,
               with_predictions=False):
    """Evaluates over `dataset` (global batches, not distributed) or its first
    `num_steps` batches.

    Args:
      dataset: the whole split in global batches (the same on every worker).
      num_steps: evaluate only the first `num_steps` batches; None = all.
      prediction_writer: gets every prediction (`TaskEvaluator.host_update`); implies
        `with_predictions`.
      with_predictions: gather every prediction to the host. The gather is collective:
        under MultiWorkerMirroredStrategy every worker must pass the same value, also
        those that write nothing (only the chief writes `eval.save_predictions`).

    Returns:
      `evaluator.results()` plus `num_images`, the number of valid images the replicas
      evaluated.
    """
    with_predictions = with_predictions or prediction_writer is not None
    self.evaluator.reset()
    self._num_images.reset_state()
    next_index = 0
    for step, batch in enumerate(dataset):
      if num_steps is not None and step >= num_steps:
        break
      padded, count = _pad_to(numeric_features(batch), self.global_batch_size)
      gathered = self._step(self.distribute(padded), with_predictions)
      if gathered:
        # String features never left the host; they join the outputs by position.
        host = {key: value.numpy() for key, value in batch.items()}
        host["index"] = np.arange(next_index, next_index + count)
        self.evaluator.host_update(
            host, {key: value.numpy()[:count] for key, value in gathered.items()},
            prediction_writer)
      next_index += count
    return dict(self.evaluator.results(), num_images=int(self._num_images.result()))


def evaluate_task(task, model, strategy, *, num_steps=None, prediction_writer=None,
                  with_predictions=False, jit_compile=False, loop=None):
  """One evaluation of `model` for `task` (see `EvalLoop.evaluate`); returns (results,
  the EvalLoop to reuse)."""
  if loop is None or loop.evaluator.model_fn is not model:
    with strategy.scope():
      evaluator = task.create_evaluator(model)
    batch_size = global_eval_batch_size(task.config.eval.batch_size, strategy)
    loop = EvalLoop(strategy, evaluator, batch_size, jit_compile=jit_compile)
  dataset = task.eval_dataset(loop.global_batch_size)
  return loop.evaluate(dataset, num_steps=num_steps, prediction_writer=prediction_writer,
                       with_predictions=with_predictions), loop


__all__ = ["EvalLoop", "evaluate_task", "global_eval_batch_size", "numeric_features"]
