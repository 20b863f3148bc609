"""Custom training loop on `tf.distribute`: steps, checkpoints, summaries and progress."""
import math
import os
import time

from absl import logging
import tensorflow as tf
import tf_keras

from deeplab_axial import errors
from deeplab_axial import progress
from deeplab_axial.training import distribution
from deeplab_axial.training import optimizers


class TrainingDivergedError(errors.UserError, RuntimeError):
  """A loss became NaN or Inf; training stopped without saving the diverged weights."""


class ProgressReporter:
  """Formats one console line per report: step, loss parts, throughput and ETA."""

  def __init__(self, total_steps, global_batch_size, log_fn=logging.info):
    self._total_steps = total_steps
    self._global_batch_size = global_batch_size
    self._log_fn = log_fn
    self._last_time = None
    self._last_step = None
    self._seconds_per_step = None

  def start(self, step):
    self._last_time = time.perf_counter()
    self._last_step = step

  def report(self, step, losses, learning_rate=None):
    """Logs progress at `step` with the latest `losses` (name -> float).

    Returns:
      Images per second since the previous report (0 when no step ran).
    """
    now = time.perf_counter()
    steps = step - self._last_step
    elapsed = now - self._last_time
    self._last_time, self._last_step = now, step
    images_per_second = 0.0
    if steps > 0 and elapsed > 0:
      seconds_per_step = elapsed / steps
      # An exponential average keeps the ETA stable across noisy loops.
      self._seconds_per_step = (seconds_per_step if self._seconds_per_step is None else
                                0.7 * self._seconds_per_step + 0.3 * seconds_per_step)
      images_per_second = steps * self._global_batch_size / elapsed
    eta = progress.format_duration((self._total_steps - step) * (self._seconds_per_step or 0.0))
    parts = " ".join(f"{k} {v:.4f}" for k, v in losses.items() if k != "total")
    lr = "" if learning_rate is None else f" | lr {learning_rate:.3g}"
    self._log_fn(f"step {step}/{self._total_steps} ({100.0 * step / self._total_steps:.1f}%) "
                 f"| loss {losses.get('total', float('nan')):.4f} ({parts}){lr} "
                 f"| {images_per_second:.1f} img/s | ETA {eta}")
    return images_per_second


class Trainer:
  """Runs training steps of a Keras model under a `tf.distribute.Strategy`.

  The model, optimizer and loss must have been created inside `strategy.scope()`.
  `compute_losses(batch, outputs)` runs per replica and returns a dict of scalar losses
  keyed by `loss_names` (which must include "total"), each already divided by the
  *global* batch size, so that the sum over replicas is the global-batch loss.

  `optimizer_group_variables` are the variables a `GroupedOptimizer` would give their own
  optimizer (the backbone's): with them, a checkpoint saved with the other grouping (a
  changed `solver.backbone_learning_rate_multiplier`) resumes with its optimizer state.
  """

  def __init__(self, *, strategy, model, optimizer, compute_losses, loss_names,
               train_dataset_fn,
               global_batch_size, total_steps, model_dir, steps_per_loop=1,
               checkpoint_interval=1000, max_to_keep=3, summary_interval=100,
               jit_compile=False, checkpoint_items=None, optimizer_group_variables=None,
               log_fn=logging.info):
    if global_batch_size % strategy.num_replicas_in_sync:
      raise ValueError(f"train batch size {global_batch_size} is not divisible by the "
                       f"number of replicas ({strategy.num_replicas_in_sync})")
    if total_steps <= 0 or steps_per_loop <= 0:
      raise ValueError(f"total_steps ({total_steps}) and steps_per_loop ({steps_per_loop}) "
                       "must be positive")
    if "total" not in loss_names:
      raise ValueError(f"loss_names {tuple(loss_names)} must include 'total'")
    self._loss_names = tuple(loss_names)
    self._strategy = strategy
    self._model = model
    self._compute_losses = compute_losses
    self._global_batch_size = global_batch_size
    self._total_steps = total_steps
    self._steps_per_loop = steps_per_loop
    self._summary_interval = summary_interval
    self._log_fn = log_fn
    self._is_chief = distribution.is_chief(strategy)
    self._model_dir = model_dir
    with strategy.scope():
      if (tf_keras.mixed_precision.global_policy().name == "mixed_float16" and
          not isinstance(optimizer, tf_keras.mixed_precision.LossScaleOptimizer)):
        optimizer = tf_keras.mixed_precision.LossScaleOptimizer(optimizer)
      self._global_step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step",
                                      aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
    self._optimizer = optimizer
    with strategy.scope():
      # Slots exist before a restore, so resuming restores them at once instead of
      # deferring (and warning about) values that a finished run never uses.
      optimizer.build(model.trainable_variables)
    items = dict(checkpoint_items or {})
    items.update(model=model, optimizer=optimizer, global_step=self._global_step)
    self._checkpoint = tf.train.Checkpoint(**items)
    self._items_but_optimizer = {k: v for k, v in items.items() if k != "optimizer"}
    self._optimizer_group_variables = optimizer_group_variables
    # Every worker must save (saving reads distributed variables collectively), but only
    # the chief's files are kept; the others write to a directory removed after training.
    self._checkpoint_dir = model_dir if self._is_chief else os.path.join(
        model_dir, f".worker_tmp_{strategy.cluster_resolver.task_id}")
    self._manager = tf.train.CheckpointManager(
        self._checkpoint, self._checkpoint_dir, max_to_keep=max_to_keep if self._is_chief
        else 1)
    # Tracked here rather than by the manager so that all workers, whatever their own
    # directory holds, take the same (collective) save decisions.
    self._checkpoint_interval = checkpoint_interval
    self._last_saved_step = None
    self._dataset = strategy.distribute_datasets_from_function(train_dataset_fn)
    self._iterator = None
    self._writer = (tf.summary.create_file_writer(os.path.join(model_dir, "train"))
                    if self._is_chief else tf.summary.create_noop_writer())
    # Only XLA needs its own function; a nested plain tf.function would break layers that
    # synchronize inside the model (sync batch norm's all-reduce calls merge_call).
    self._compute_gradients = (tf.function(self._replica_gradients, jit_compile=True)
                               if jit_compile else self._replica_gradients)
    # Without autograph: the loop is an explicit tf.while_loop, and Keras then traces
    # every layer's call as plain Python instead of converting it first (the demo's
    # training trace took 20 s with autograph, 13-14 s without; measured).
    self._train_loop = tf.function(self._loop, autograph=False)
    self._progress = ProgressReporter(total_steps, global_batch_size, log_fn)

  @property
  def global_step(self):
    return int(self._global_step.numpy())

  @property
  def checkpoint_manager(self):
    return self._manager

  @property
  def optimizer(self):
    return self._optimizer

  def restore_or_initialize(self):
    """Restores the latest checkpoint in model_dir, if any. Returns its path or None.

    Every worker restores the chief's checkpoint (model_dir is shared between workers).
    """
    path = tf.train.latest_checkpoint(self._model_dir)
    if path:
      if optimizers.is_grouped(self._optimizer) == optimizers.checkpoint_is_grouped(
          path, "optimizer"):
        self._checkpoint.restore(path)
      else:
        self._restore_regrouped(path)
      self._last_saved_step = self.global_step
      self._log_fn(f"Resumed from {path} at step {self.global_step}.")
    return path

  def _restore_regrouped(self, path):
    """Restores a checkpoint whose optimizer was grouped differently (see __init__)."""
    if self._optimizer_group_variables is None:
      raise ValueError(
          f"checkpoint {path} was saved with a different "
          "solver.backbone_learning_rate_multiplier (one optimizer vs. a separate backbone "
          "optimizer) and this trainer was given no optimizer_group_variables to map the "
          "optimizer state")
    tf.train.Checkpoint(**self._items_but_optimizer).restore(path).expect_partial()
    with self._strategy.scope():
      optimizers.restore_regrouped_state(self._optimizer, path, "optimizer",
                                         self._model.trainable_variables,
                                         self._optimizer_group_variables)
    self._log_fn(f"Restored the optimizer state of {path} into a regrouped optimizer "
                 "(solver.backbone_learning_rate_multiplier changed); the loss scale, if "
                 "any, restarts.")

  def _replica_gradients(self, batch):
    variables = self._model.trainable_variables
    with tf.GradientTape() as tape:
      outputs = self._model(batch["image"], training=True)
      losses = self._compute_losses(batch, outputs)
      total = losses["total"]
      if self._model.losses:
        total += tf.nn.scale_regularization_loss(tf.add_n(self._model.losses))
      scaled = (self._optimizer.get_scaled_loss(total) if isinstance(
          self._optimizer, tf_keras.mixed_precision.LossScaleOptimizer) else total)
    gradients = tape.gradient(scaled, variables)
    if isinstance(self._optimizer, tf_keras.mixed_precision.LossScaleOptimizer):
      gradients = self._optimizer.get_unscaled_gradients(gradients)
    return losses, gradients

  def _replica_step(self, batch):
    losses, gradients = self._compute_gradients(batch)
    # Applied outside the (optionally XLA-compiled) gradient function: the optimizer's
    # cross-replica all-reduce cannot live inside a compiled cluster.
    self._optimizer.apply_gradients(zip(gradients, self._model.trainable_variables))
    self._global_step.assign_add(1)
    return losses

  def _loop(self, iterator, num_steps):
    """Runs `num_steps` steps; returns each step's global losses, stacked per name."""
    def body(i, history):
      per_replica = self._strategy.run(self._replica_step, args=(next(iterator),))
      losses = [tf.cast(self._strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica[k],
                                              axis=None), tf.float32)
                for k in self._loss_names]
      return i + 1, history.write(i, tf.stack(losses))

    _, history = tf.while_loop(lambda i, _: i < num_steps, body,
                               (tf.constant(0), tf.TensorArray(tf.float32, size=num_steps)))
    stacked = history.stack()
    return {k: stacked[:, j] for j, k in enumerate(self._loss_names)}

  def _learning_rate(self):
    optimizer = getattr(self._optimizer, "inner_optimizer", self._optimizer)
    optimizer = getattr(optimizer, "optimizer", optimizer)  # Lookahead-style wrappers.
    lr = getattr(optimizer, "learning_rate", None)
    if lr is None:
      return None
    if callable(lr):
      return float(lr(optimizer.iterations))
    return float(tf.convert_to_tensor(lr))

  def _input_iterator(self):
    if self._iterator is None:
      self._iterator = iter(self._dataset)
    return self._iterator

  def trace_step(self):
    """Traces the training loop (forward, losses, gradients, optimizer update) without
    running it; the next `run_steps`/`train` call reuses this trace.

    Returns:
      The `tf.types.experimental.ConcreteFunction` of the loop.
    """
    return self._train_loop.get_concrete_function(self._input_iterator(), tf.constant(1))

  def run_steps(self, num_steps):
    """Runs `num_steps` training steps (no checkpoint, no summary).

    Returns:
      {loss name: float} of the last step.

    Raises:
      TrainingDivergedError: a loss became NaN/Inf; names the step and the loss part.
    """
    step = self.global_step
    history = self._train_loop(self._input_iterator(), tf.constant(num_steps))
    history = {k: v.numpy() for k, v in history.items()}
    self._raise_if_diverged(step, history)
    return {k: float(v[-1]) for k, v in history.items()}

  def train(self, until_step=None):
    """Trains until `until_step` (default: total_steps); saves checkpoints on interval.

    Raises:
      TrainingDivergedError: a loss became NaN/Inf; names the step and the loss part.
    """
    until_step = min(until_step or self._total_steps, self._total_steps)
    if self._iterator is None:
      # Nothing else is printed while the first call traces and compiles the step.
      self._log_fn("tracing the training step (the first call can take a minute)...")
    step = self.global_step
    self._progress.start(step)
    last_summary = step
    while step < until_step:
      latest = self.run_steps(min(self._steps_per_loop, until_step - step))
      step = self.global_step
      if step - last_summary >= self._summary_interval or step >= until_step:
        lr = self._learning_rate()
        images_per_second = self._progress.report(step, latest, lr)
        self._write_summaries(step, latest, lr, images_per_second)
        last_summary = step
      if step - (self._last_saved_step or 0) >= self._checkpoint_interval:
        self.save()
    self.save()
    self._writer.flush()
    if not self._is_chief and tf.io.gfile.exists(self._checkpoint_dir):
      tf.io.gfile.rmtree(self._checkpoint_dir)
    return step

  def save(self):
    """Saves a checkpoint at the current step unless one was saved or restored for it."""
    step = self.global_step
    if step != self._last_saved_step:
      self._manager.save(checkpoint_number=step)
      self._last_saved_step = step

  def _raise_if_diverged(self, start_step, history):
    for name, values in history.items():
      bad = [i for i, v in enumerate(values) if not math.isfinite(v)]
      if bad:
        step = start_step + bad[0] + 1
        parts = ", ".join(f"{k}={float(v[bad[0]]):.4g}" for k, v in history.items())
        raise TrainingDivergedError(
            f"the {name} loss is {values[bad[0]]} at step {step} ({parts}); training "
            f"stopped. The last good checkpoint is {self._manager.latest_checkpoint}. "
            "Lower the learning rate, enable gradient clipping (solver.clip_gradient_norm) "
            "or check the input labels.")

  def _write_summaries(self, step, losses, learning_rate, images_per_second):
    with self._writer.as_default(step=step):
      for name, value in losses.items():
        tf.summary.scalar(f"losses/{name}", value)
      if learning_rate is not None:
        tf.summary.scalar("learning_rate", learning_rate)
      tf.summary.scalar("images_per_second", images_per_second)
