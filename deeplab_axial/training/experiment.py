"""Runs an experiment config: train, eval, train_and_eval, continuous_eval or rehearse.

This is the logic behind `trainer/train.py`: the CLI only parses flags. What differs
between panoptic segmentation, semantic segmentation and classification (model, losses,
input pipeline, evaluation) lives in `deeplab_axial.tasks`; this module holds the shared
mechanics (checkpoints and resume, initial checkpoints, evaluation schedule,
`eval_metrics.json`), and `training.evaluation` the one distributed eval loop.
"""
import contextlib
import dataclasses
import json
import os
import time
from typing import Dict, Optional, Tuple

from absl import logging
import numpy as np
import tensorflow as tf
import tf_keras

from deeplab_axial import checkpoints
from deeplab_axial import config as config_lib
from deeplab_axial.data import datasets
from deeplab_axial.metrics.report import METRICS_FILE  # noqa: F401  (re-exported)
from deeplab_axial.metrics.report import read_metrics
from deeplab_axial import tasks
from deeplab_axial.models import builder
from deeplab_axial.training import distribution
from deeplab_axial.training import evaluation
from deeplab_axial.training import loop
from deeplab_axial.training import optimizers
from deeplab_axial.training import summaries
from deeplab_axial.training import sync_batch_norm

TrainingDivergedError = loop.TrainingDivergedError

TRAINING_MODES = ("train", "eval", "train_and_eval", "continuous_eval")
# Everything but the long loop, at the config's real shapes (`training.rehearsal`).
REHEARSE = "rehearse"
MODES = TRAINING_MODES + (REHEARSE,)
PREDICTIONS_DIR = "eval_predictions"
# The config a model_dir was last run with (written by `run_experiment`).
CONFIG_FILE = "config.textproto"
# Fields that decide which state variables the optimizer has: a checkpoint trained with
# other values holds no state this optimizer can resume (Adam's moments are not SGD's
# momentum), and TF would restore it partially without a word.
OPTIMIZER_STATE_FIELDS = ("solver.optimizer", "solver.lookahead.enable")


def run_from_flags(*, config_file, mode, model_dir, overrides=(), num_gpus=0,
                   num_cpu_replicas=0, tpu=None, data_dir=None):
  """Loads the config, creates the strategy and runs `mode`.

  Returns:
    The final metrics, or the `rehearsal.RehearsalReport` of `--mode=rehearse`.
  """
  if mode not in MODES:
    raise ValueError(f"--mode={mode!r} is not one of {MODES}")
  if not model_dir and mode != REHEARSE:
    raise ValueError(f"--mode={mode} needs --model_dir (only --mode={REHEARSE} runs "
                     "without one)")
  strategy = distribution.create_strategy(num_gpus=num_gpus, tpu=tpu,
                                          num_cpu_replicas=num_cpu_replicas)
  experiment_config = config_lib.load_config(config_file, overrides)
  if mode == REHEARSE:
    # Imported here: rehearsal is built on this module.
    from deeplab_axial.training import rehearsal  # pylint: disable=import-outside-toplevel
    return rehearsal.rehearse(experiment_config, strategy=strategy, model_dir=model_dir,
                              data_dir=data_dir)
  return run_experiment(experiment_config, mode, model_dir, strategy=strategy,
                        data_dir=data_dir)


def default_data_dir():
  return os.environ.get("DEEPLAB_AXIAL_DATA_DIR", os.path.abspath("data_cache"))


def run_experiment(experiment_config, mode, model_dir, strategy=None, data_dir=None):
  """Runs one mode of an experiment.

  Args:
    experiment_config: a loaded (validated) `ExperimentOptions`.
    mode: one of TRAINING_MODES (`run_from_flags` also rehearses).
    model_dir: checkpoints, `train/` and `eval/` summaries, `eval_metrics.json`.
    strategy: a `tf.distribute.Strategy` (default: the current one).
    data_dir: where relative file patterns are resolved (and the shapes demo data made).

  Returns:
    The metrics of the last evaluation (dict), or {} when nothing was evaluated.
  """
  if mode not in TRAINING_MODES:
    raise ValueError(f"mode {mode!r} is not one of {TRAINING_MODES}")
  strategy = strategy or tf.distribute.get_strategy()
  data_dir = data_dir or default_data_dir()
  tf.io.gfile.makedirs(model_dir)
  trains = mode in ("train", "train_and_eval")
  if trains:
    check_optimizer_state_resumable(experiment_config, model_dir)
  config_path = os.path.join(model_dir, CONFIG_FILE)
  # The record is of the training config: an evaluation job beside it keeps it.
  if distribution.is_chief(strategy) and (trains or not tf.io.gfile.exists(config_path)):
    with tf.io.gfile.GFile(config_path, "w") as f:
      f.write(config_lib.config_to_text(experiment_config))
  with mixed_precision_policy(experiment_config):
    return _Experiment(experiment_config, model_dir, strategy, data_dir).run(mode)


def check_optimizer_state_resumable(experiment_config, model_dir):
  """Refuses to resume a checkpoint in `model_dir` trained with another kind of optimizer.

  Compares `OPTIMIZER_STATE_FIELDS` with the config `model_dir` was last run with
  (`CONFIG_FILE`). A changed `solver.backbone_learning_rate_multiplier` is fine: the
  trainer maps the optimizer state between one and two groups.

  Raises:
    ValueError: naming each changed field, its old and new value, and what to do instead.
  """
  previous_path = os.path.join(model_dir, CONFIG_FILE)
  checkpoint = tf.train.latest_checkpoint(model_dir)
  if not (checkpoint and tf.io.gfile.exists(previous_path)):
    return
  with tf.io.gfile.GFile(previous_path) as f:
    previous = config_lib.parse_config(f.read(), source=previous_path)
  changed = []
  for path in OPTIMIZER_STATE_FIELDS:
    old, new = (config_lib.field_value(c, path) for c in (previous, experiment_config))
    if old != new:
      changed.append(f"{path} was {old!r}, now {new!r}")
  if changed:
    raise ValueError(
        f"--model_dir={model_dir} holds a checkpoint trained with another optimizer "
        f"({'; '.join(changed)}; see {previous_path}): its optimizer state cannot be "
        "resumed. Keep the old setting, or train in a new --model_dir with "
        f"train.initial_checkpoint: '{checkpoint}' (weights "
        "only)")


@contextlib.contextmanager
def mixed_precision_policy(experiment_config):
  """Sets the Keras policy `train.mixed_precision` inside the block, restores it after."""
  previous_policy = tf_keras.mixed_precision.global_policy()
  tf_keras.mixed_precision.set_global_policy(experiment_config.train.mixed_precision)
  try:
    yield
  finally:
    tf_keras.mixed_precision.set_global_policy(previous_policy)


@dataclasses.dataclass(frozen=True)
class RunSettings:
  """The `train` and `eval` settings the modes read besides the model, task and solver.

  Read once when the experiment is set up (`from_config`), so that a run and a rehearsal
  (`deeplab_axial.training.config_check`) read exactly the same fields.
  """
  trainer: Dict[str, object]
  initial_checkpoint: str
  init_modules: Tuple[str, ...]
  allow_partial_init: bool
  eval_interval: int
  eval_steps: Optional[int]
  save_predictions: bool
  continuous_eval_timeout: int

  @classmethod
  def from_config(cls, experiment_config) -> "RunSettings":
    train, eval_options = experiment_config.train, experiment_config.eval
    return cls(
        trainer={"global_batch_size": train.batch_size, "total_steps": train.steps,
                 "steps_per_loop": train.steps_per_loop,
                 "checkpoint_interval": train.checkpoint_interval,
                 "max_to_keep": train.max_to_keep,
                 "summary_interval": train.summary_interval,
                 "jit_compile": train.jit_compile},
        initial_checkpoint=train.initial_checkpoint,
        init_modules=tuple(train.init_modules),
        allow_partial_init=train.allow_partial_init,
        eval_interval=eval_options.interval, eval_steps=eval_options.steps or None,
        save_predictions=eval_options.save_predictions,
        continuous_eval_timeout=eval_options.continuous_eval_timeout)

  @property
  def total_steps(self):
    return self.trainer["total_steps"]


def _file_pattern(patterns, data_dir, dataset_name, split):
  resolved = [config_lib.resolve_file_pattern(p, data_dir) for p in patterns]
  if not resolved:
    raise ValueError(f"dataset.{split}_file_pattern is empty for dataset {dataset_name!r}")
  return resolved


def resolve_file_patterns(experiment_config, data_dir):
  """(DatasetInfo, train patterns, eval patterns) of a config, resolved against data_dir."""
  info = datasets.dataset_info_from_config(experiment_config.dataset, data_dir)
  dataset = experiment_config.dataset
  return (info, _file_pattern(dataset.train_file_pattern, data_dir, info.name, "train"),
          _file_pattern(dataset.eval_file_pattern, data_dir, info.name, "eval"))


def _ensure_demo_data(dataset_info, patterns):
  """Creates the procedural shapes TFRecords on first use (cached afterwards)."""
  if dataset_info.name != "shapes" or all(tf.io.gfile.glob(p) for p in patterns):
    return
  from deeplab_axial.data.converters import shapes  # pylint: disable=import-outside-toplevel
  output_dir = os.path.dirname(patterns[0])
  logging.info("Creating the shapes demo dataset in %s (first use only).", output_dir)
  shapes.ensure_shapes_tfrecords(output_dir, show_progress=True)


class _Experiment:
  """Holds the model, the task and the loops of one experiment.

  `task` (default: the config's task on its TFRecords) and `train_dataset_fn` (default:
  `task.train_dataset`) let rehearsal substitute synthetic batches of the same spec.
  """

  def __init__(self, experiment_config, model_dir, strategy, data_dir, *, task=None,
               train_dataset_fn=None):
    self.config = experiment_config
    self.name = experiment_config.experiment_name or "<unnamed>"
    self.settings = RunSettings.from_config(experiment_config)
    self.model_dir = model_dir
    self.strategy = strategy
    if task is None:
      info, train_patterns, eval_patterns = resolve_file_patterns(experiment_config, data_dir)
      task = tasks.create_task(experiment_config, info, train_patterns, eval_patterns)
    self.task = task
    self._train_dataset_fn = train_dataset_fn or task.train_dataset
    tf_keras.utils.set_random_seed(experiment_config.train.seed)
    with strategy.scope():
      self.model = self.task.build_model()
      backbone_variables = (
          builder.find_backbone(self.model).trainable_variables
          if experiment_config.solver.backbone_learning_rate_multiplier != 1.0 else None)
      self.optimizer, self.schedule = optimizers.build_optimizer(
          experiment_config.solver, experiment_config.train.steps,
          backbone_variables=backbone_variables)
    # Before the first trace of a training step: it changes how BN layers compute.
    sync_batch_norm.configure_sync_batch_norm(self.model, strategy,
                                              experiment_config.train.sync_batch_norm,
                                              experiment_config.train.jit_compile)
    self.metrics_path = os.path.join(model_dir, METRICS_FILE)
    self._trainer = None
    self._eval_writer = None
    self._eval_loop = None

  # ----------------------------------------------------------------------------- train
  @property
  def trainer(self):
    if self._trainer is None:
      self._trainer = loop.Trainer(
          strategy=self.strategy, model=self.model, optimizer=self.optimizer,
          compute_losses=self.task.compute_losses, loss_names=self.task.loss_names,
          train_dataset_fn=self._train_dataset_fn, model_dir=self.model_dir,
          **self.settings.trainer,
          checkpoint_items={"backbone": builder.find_backbone(self.model)},
          # Lets a run resume after solver.backbone_learning_rate_multiplier changed.
          optimizer_group_variables=builder.find_backbone(self.model).trainable_variables)
    return self._trainer

  def restore_for_training(self):
    """Resumes from model_dir's latest checkpoint, else restores `train.initial_checkpoint`.

    Returns:
      What was restored, one line ("resumed from ...", the initial checkpoint's R/T
      summary), or None.
    """
    resumed = self.trainer.restore_or_initialize()
    if resumed:
      return f"resumed from {resumed} (model_dir's latest checkpoint)"
    settings = self.settings
    if not settings.initial_checkpoint:
      return None
    report = restore_initial_checkpoint(self.model, settings.initial_checkpoint,
                                        settings.init_modules,
                                        allow_partial=settings.allow_partial_init)
    logging.info("%s", report.summary())
    return report.summary()

  # ------------------------------------------------------------------------------ eval
  def evaluate(self, step):
    """Evaluates the current weights; writes `eval_metrics.json` and summaries."""
    start = time.perf_counter()
    num_steps = self.settings.eval_steps
    if self.settings.save_predictions:
      results = self._evaluate_and_save_predictions(step, num_steps)
    else:
      results = self._evaluate(num_steps)
    scalars = {k: float(v) for k, v in results.items() if np.ndim(v) == 0}
    logging.info("eval at step %d (%.1f s): %s", step, time.perf_counter() - start,
                 " ".join(f"{k} {v:.4f}" for k, v in sorted(scalars.items())))
    if distribution.is_chief(self.strategy):
      self._record_metrics(step, scalars)
    if isinstance(self.task, tasks.PanopticTask):
      # Every worker samples (reading synced BN statistics is collective); the chief writes.
      sample = summaries.sample_panoptic_predictions(
          self.model, self.task.post_processing, self.task.eval_dataset())
      if distribution.is_chief(self.strategy):
        summaries.write_panoptic_images(self._eval_writer, step, *sample, self.task.info)
        self._eval_writer.flush()
    return scalars

  def _evaluate_and_save_predictions(self, step, num_steps):
    """Evaluates and writes official-format predictions to model_dir/eval_predictions.

    Every worker gathers the predictions of all replicas (the gather is collective); only
    the chief writes them.
    """
    if not distribution.is_chief(self.strategy):
      return self._evaluate(num_steps, with_predictions=True)
    output_dir = os.path.join(self.model_dir, PREDICTIONS_DIR, f"step_{step}")
    writer = self.task.prediction_writer(output_dir)
    with writer:
      results = self._evaluate(num_steps, prediction_writer=writer)
    logging.info("wrote %d predictions to %s", len(writer.annotations), output_dir)
    return results

  def _evaluate(self, num_steps, prediction_writer=None, with_predictions=False):
    results, self._eval_loop = evaluation.evaluate_task(
        self.task, self.model, self.strategy, num_steps=num_steps,
        prediction_writer=prediction_writer, with_predictions=with_predictions,
        loop=self._eval_loop)
    return results

  def _record_metrics(self, step, scalars):
    all_metrics = read_metrics(self.metrics_path)
    all_metrics[str(step)] = scalars
    temporary = self.metrics_path + ".tmp"
    with tf.io.gfile.GFile(temporary, "w") as f:
      json.dump(all_metrics, f, indent=1, sort_keys=True)
    tf.io.gfile.rename(temporary, self.metrics_path, overwrite=True)
    if self._eval_writer is None:
      self._eval_writer = tf.summary.create_file_writer(os.path.join(self.model_dir, "eval"))
    summaries.write_scalars(self._eval_writer, step, scalars)
    self._eval_writer.flush()

  def _restore_for_eval(self, checkpoint_path):
    checkpoints.restore_model(self.model, checkpoint_path)
    return checkpoints.step_of(checkpoint_path)

  # ------------------------------------------------------------------------------ modes
  def run(self, mode):
    logging.info("experiment %s (%s): %s", self.name,
                 self.config.model.meta_architecture, mode)
    _ensure_demo_data(self.task.info, self.task.train_patterns + self.task.eval_patterns)
    return getattr(self, f"_run_{mode}")()

  def _run_train(self):
    self.restore_for_training()
    self.trainer.train()
    return {}

  def _run_eval(self):
    path = tf.train.latest_checkpoint(self.model_dir)
    if path is None:
      raise FileNotFoundError(f"no checkpoint in --model_dir={self.model_dir} to evaluate")
    return self.evaluate(self._restore_for_eval(path))

  def _run_train_and_eval(self):
    self.restore_for_training()
    total, interval = self.settings.total_steps, self.settings.eval_interval
    step = self.trainer.global_step
    results = read_metrics(self.metrics_path).get(str(step), {})
    if step >= total:
      if results:
        logging.info("Training already finished at step %d and was evaluated: %s", step,
                     results)
        return results
      return self.evaluate(step)
    # Whether to evaluate is decided from this run's steps, not from eval_metrics.json:
    # only the chief writes that file, and every worker must run the same evaluations.
    while step < total:
      step = self.trainer.train(until_step=min(total, (step // interval + 1) * interval))
      results = self.evaluate(step)
    return results

  def _run_continuous_eval(self):
    results = {}
    timeout = self.settings.continuous_eval_timeout
    for path in tf.train.checkpoints_iterator(self.model_dir, timeout=timeout):
      step = self._restore_for_eval(path)
      results = self.evaluate(step)
      if step >= self.settings.total_steps:
        break
    return results


def restore_initial_checkpoint(model, checkpoint, modules=(), *, allow_partial=False):
  """Initializes `model` (or only its `modules`, e.g. ["backbone"]) from a checkpoint.

  See `deeplab_axial.checkpoints.restore_initial` (relative tables are adapted; missing
  variables are an error unless `allow_partial`).

  Returns:
    The `checkpoints.RestoreReport`.

  Raises:
    FileNotFoundError: no checkpoint at `checkpoint`.
    ValueError: an unknown module name; `checkpoints.CheckpointMismatchError`.
  """
  parts = {"backbone": builder.find_backbone(model)}
  unknown = [m for m in modules if m not in parts]
  if unknown:
    raise ValueError(f"train.init_modules {unknown} unknown; expected names from "
                     f"{sorted(parts)} (or none for the whole model)")
  items = {m: parts[m] for m in modules} if modules else {"model": model}
  return checkpoints.restore_initial(items, checkpoint, allow_partial=allow_partial)
