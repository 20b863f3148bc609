"""Rehearsal: everything a real run of a config does, except the long loop (`--mode=rehearse`).

`rehearse(config)` builds, from that ONE config object, what `train_and_eval` and export
build, at the config's real shapes:

1. the task and the model under the strategy (optimizer, sync batch norm: `experiment._Experiment`);
2. the training input: the real pipeline when the config's TFRecords exist, else
   synthetic batches with the pipeline's element spec (dtypes and shapes are read from
   the task's own pipeline built on an empty TFRecord file, so nothing is guessed);
3. `train.initial_checkpoint` (or model_dir's latest checkpoint), restored as training
   does, with its `restored R/T` line;
4. one training step of `training.loop.Trainer` (forward, losses, gradients, optimizer
   update) traced at the per-replica batch, and run when the estimated training memory
   fits this machine (otherwise a note says it was only traced, and why);
5. the evaluation step (`TaskEvaluator.predict` + `update` through `EvalLoop`, with the
   configured scales and flip) traced at the eval crop;
6. the export signatures (`task.serving_module(model, options).signatures()`) traced.

Tracing (`tf.function(...).get_concrete_function`) builds the graph, with every static
shape check of every layer, without allocating activations, so it works for XL at
1025x2049 on a laptop. A stage that fails becomes one problem line naming the config field
to change; `rehearse` raises `RehearsalError` (one line, through the CLI's error
boundary) when any problem remains after `on_finish` (the hook where a caller adds its
own checks, e.g. config fields set but never read).
"""
import dataclasses
import os
import re
import tempfile
import time
from typing import Callable, Dict, List, Optional

import tensorflow as tf

from deeplab_axial import config_usage
from deeplab_axial import errors
from deeplab_axial import memory_model
from deeplab_axial import tasks
from deeplab_axial.export import from_config
from deeplab_axial.models import multiply_adds
from deeplab_axial.training import evaluation
from deeplab_axial.training import experiment

# Fraction of the available memory a step may use to be run rather than only traced.
_MEMORY_HEADROOM = 0.7
# Characters of an error message kept in a problem line.
_MESSAGE_LENGTH = 600
# Weights, two optimizer moments and Lookahead's slow weights.
_WEIGHT_COPIES = 4


class RehearsalError(errors.UserError):
  """A config that cannot train, evaluate or export; the message names what to change."""


@dataclasses.dataclass
class RehearsalReport:
  """What a rehearsal built, ran and traced.

  Attributes:
    experiment_name: `experiment_name` of the config.
    meta_architecture: `model.meta_architecture`.
    parameters: number of model parameters.
    multiply_adds: M-Adds of one forward pass at the eval crop (None if not counted).
    eval_crop: (height, width) of the eval step (None: dynamic).
    per_replica_batch: training images per replica.
    train_input: "real pipeline (...)" or "synthetic (...)".
    estimated_memory_bytes: estimated memory of one training step per replica.
    ran: what ran (e.g. "train step at [4, 769, 769, 3]").
    traced: what was only traced.
    restored: the initial/resume checkpoint line, or None.
    notes: things the user should know (e.g. why the step was not run).
    problems: one line each, naming the config field to change; empty = success.
    seconds: {stage: wall-clock seconds}.
  """
  experiment_name: str
  meta_architecture: str
  parameters: int = 0
  multiply_adds: Optional[int] = None
  eval_crop: Optional[tuple] = None
  per_replica_batch: int = 0
  train_input: str = ""
  estimated_memory_bytes: Optional[int] = None
  ran: List[str] = dataclasses.field(default_factory=list)
  traced: List[str] = dataclasses.field(default_factory=list)
  restored: Optional[str] = None
  notes: List[str] = dataclasses.field(default_factory=list)
  problems: List[str] = dataclasses.field(default_factory=list)
  seconds: Dict[str, float] = dataclasses.field(default_factory=dict)

  def summary_lines(self) -> List[str]:
    """The summary printed at the end of a rehearsal."""
    madds = ("not counted" if self.multiply_adds is None else
             f"{self.multiply_adds / 1e9:.1f}G at eval crop {list(self.eval_crop or [])}")
    memory = ("unknown" if self.estimated_memory_bytes is None else
              _gigabytes(self.estimated_memory_bytes))
    lines = [f"rehearsal of {self.experiment_name} ({self.meta_architecture}):",
             f"  parameters: {self.parameters / 1e6:.2f}M; M-Adds: {madds}",
             f"  per-replica batch: {self.per_replica_batch}; training input: "
             f"{self.train_input}",
             f"  estimated training memory per replica: {memory}",
             f"  ran: {', '.join(self.ran) or 'nothing'}",
             f"  only traced: {', '.join(self.traced) or 'nothing'}",
             f"  initial checkpoint: {self.restored or 'none'}"]
    lines.append("  seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in self.seconds.items()))
    lines += [f"  note: {note}" for note in self.notes]
    lines += [f"  problem: {problem}" for problem in self.problems]
    lines.append("rehearsal: " + ("FAILED" if self.problems else "OK"))
    return lines


def rehearse(experiment_config, *, strategy=None, model_dir=None, data_dir=None,
             run_step=None, count_multiply_adds=True,
             on_finish: Optional[Callable[[RehearsalReport], None]] = None,
             log_fn=None) -> RehearsalReport:
  """Rehearses a loaded config (module docstring); everything is built from this object.

  Args:
    experiment_config: a loaded `ExperimentOptions`. Its reads are tracked: a set field
      that no stage read is a problem (`config_usage.check_all_read`).
    strategy: a `tf.distribute.Strategy` (default: the current one).
    model_dir: where the trainer would write (default: a temporary directory, removed);
      an existing checkpoint there is resumed, as a real run would.
    data_dir: where relative file patterns are resolved (default as the trainer's).
    run_step: True/False forces running the training step or only tracing it; None
      decides from the memory estimate.
    count_multiply_adds: count the M-Adds at the eval crop (one more forward trace).
    on_finish: called with the report before it is judged; may append to
      `report.problems` (or `report.notes`).
    log_fn: prints the progress lines (default: stdout, flushed).

  Returns:
    The `RehearsalReport` (no problems).

  Raises:
    RehearsalError: one line listing the problems (each names the field to change).
    errors.UserError / ValueError: a config that cannot even build its model.
  """
  strategy = strategy or tf.distribute.get_strategy()
  data_dir = data_dir or experiment.default_data_dir()
  log_fn = log_fn or _print
  # Every stage reads the config through one tracker: a set field that no stage read is a
  # setting the real run would silently ignore.
  tracker = config_usage.ReadTracker()
  plain_config = config_usage.unwrap(experiment_config)
  tracked_config = tracker.wrap(plain_config)
  report = RehearsalReport(tracked_config.experiment_name,
                           tracked_config.model.meta_architecture)
  with tempfile.TemporaryDirectory(prefix="rehearsal_") as scratch, \
      experiment.mixed_precision_policy(tracked_config):
    _Rehearsal(tracked_config, strategy, model_dir or os.path.join(scratch, "model"),
               data_dir, scratch, report, run_step, log_fn).run(count_multiply_adds)
  if not report.problems:  # a failed stage leaves later stages' fields unread
    try:
      config_usage.check_all_read(plain_config, tracker, "rehearse (train, eval, export)")
    except config_usage.UnreadConfigError as error:
      report.problems.append(str(error))
  if on_finish is not None:
    on_finish(report)
  for line in report.summary_lines():
    log_fn(line)
  if report.problems:
    raise RehearsalError(f"rehearsal of {report.experiment_name} failed: "
                         + "; ".join(report.problems))
  return report


class _Rehearsal:
  """The stages of one rehearsal; each failure becomes a problem line of the report."""

  def __init__(self, config, strategy, model_dir, data_dir, scratch, report, run_step,
               log_fn):
    self.config = config
    self.strategy = strategy
    self.report = report
    self.log = log_fn
    self.run_step = run_step
    info, train_patterns, eval_patterns = experiment.resolve_file_patterns(config, data_dir)
    self.real_data = all(tf.io.gfile.glob(p) for p in train_patterns + eval_patterns)
    if not self.real_data:
      # The task's own pipelines on an empty file give the element specs, reading nothing.
      empty = os.path.join(scratch, "empty.tfrecord")
      tf.io.TFRecordWriter(empty).close()
      train_patterns, eval_patterns = [empty], [empty]
    self.task = tasks.create_task(config, info, train_patterns, eval_patterns)
    self.per_replica_batch = config.train.batch_size // strategy.num_replicas_in_sync
    self.log(f"building model {config.model.backbone.name} "
             f"({config.model.meta_architecture}) under {type(strategy).__name__}")
    self.experiment = experiment._Experiment(  # pylint: disable=protected-access
        config, model_dir, strategy, data_dir, task=self.task,
        train_dataset_fn=None if self.real_data else self._synthetic_train_dataset)
    self.model = self.experiment.model
    self.traced_train_step = False

  def run(self, count_multiply_adds):
    report = self.report
    report.per_replica_batch = self.per_replica_batch
    spec = self._train_spec()
    report.train_input = (f"real pipeline ({', '.join(self.task.train_patterns)})"
                          if self.real_data else "synthetic (no TFRecords found)")
    image_shape = spec["image"].shape.as_list()
    self._stage("initial checkpoint", ["train.initial_checkpoint", "train.init_modules"],
                self._restore)
    self._stage("train trace", self._train_fields(), self._trace_train_step, image_shape)
    if self.traced_train_step:
      self._stage("memory estimate", self._train_fields(), self._estimate_memory,
                  image_shape)
      self._stage("train run", self._train_fields(), self._run_train_step, image_shape)
    report.parameters = self.model.count_params()
    self._stage("eval step", self._eval_fields(), self._eval_step)
    if count_multiply_adds and report.eval_crop:
      self._stage("M-Adds", self._eval_fields(), self._count_multiply_adds)
    self._stage("export", ["export", "eval"], self._export)

  # Stages --------------------------------------------------------------------------
  def _stage(self, name, fields, function, *args):
    """Runs one stage; a user-input failure becomes a problem line naming `fields`."""
    start = time.perf_counter()
    try:
      function(*args)
    except Exception as error:  # pylint: disable=broad-except
      if not isinstance(error, errors.USER_ERROR_TYPES + (tf.errors.OpError,)):
        raise
      self.report.problems.append(_problem_line(name, fields, error))
      self.log(f"problem: {self.report.problems[-1]}")
    seconds = time.perf_counter() - start
    self.report.seconds[name] = self.report.seconds.get(name, 0.0) + seconds

  def _restore(self):
    self.report.restored = self.experiment.restore_for_training()
    if self.report.restored:
      self.log(self.report.restored)

  def _trace_train_step(self, image_shape):
    self.log(f"tracing train step at {image_shape} (forward, loss, gradients, "
             f"{self.config.solver.optimizer} update)")
    self.experiment.trainer.trace_step()
    self.traced_train_step = True

  def _estimate_memory(self, image_shape):
    self.log("estimating the training memory")
    estimate, unknown = estimate_step_memory(self.model, image_shape)
    self.report.estimated_memory_bytes = estimate
    if unknown:
      self.report.notes.append(f"the memory estimate leaves out {unknown} tensors whose "
                               "size is only known when the step runs")

  def _run_train_step(self, image_shape):
    estimate = self.report.estimated_memory_bytes
    available = available_memory_bytes()
    fits = estimate is not None and estimate <= _MEMORY_HEADROOM * available
    what = f"train step at {image_shape}"
    if not (fits if self.run_step is None else self.run_step):
      self.report.traced.append(what)
      reason = ("not requested" if fits else
                f"estimated {_gigabytes(estimate or 0)} > {_MEMORY_HEADROOM:.0%} of the "
                f"{_gigabytes(available)} available")
      self.report.notes.append(f"train step only traced, not run: {reason}")
      self.log(f"train step not run: {reason}")
      return
    self.log(f"running one train step at {image_shape} (estimated "
             f"{_gigabytes(estimate or 0)})")
    losses = self.experiment.trainer.run_steps(1)
    self.report.ran.append(what)
    self.log("train step losses: " + " ".join(f"{k} {v:.4f}" for k, v in losses.items()))

  def _eval_step(self):
    with self.strategy.scope():
      evaluator = self.task.create_evaluator(self.model)
    batch_size = evaluation.global_eval_batch_size(self.config.eval.batch_size,
                                                   self.strategy)
    loop = evaluation.EvalLoop(self.strategy, evaluator, batch_size)
    spec = _eval_spec(self.task, batch_size)
    shape = spec["image"].shape.as_list()
    crop = tuple(shape[1:3])
    if None in crop:
      self.report.notes.append("no eval crop (eval.crop_size and the dataset's are unset): "
                               "the eval step was traced at a dynamic size")
    scales = list(getattr(self.task, "scales", ()) or [1.0])
    self.log(f"tracing eval step at {shape} (scales {scales}, flip "
             f"{self.config.eval.flip})")
    loop.trace_step(spec, with_predictions=self.config.eval.save_predictions)
    self.report.traced.append(f"eval step at {shape}")
    self.report.eval_crop = crop if None not in crop else None

  def _count_multiply_adds(self):
    crop = self.report.eval_crop
    self.log(f"counting M-Adds at {list(crop)}")
    self.report.multiply_adds = multiply_adds.count_multiply_adds(self.model, crop + (3,))

  def _export(self):
    """Traces what trainer/export.py writes: both signatures, and the static-size variant
    (`--with_preprocessing_crop`) when the config sets `export.crop_size` for it."""
    for static, options in from_config.serving_variants(self.config, self.task.info):
      suffix = f" (static {static[0]}x{static[1]})" if static else ""
      module = self.task.serving_module(self.model, options)
      self.log(f"tracing export signatures{suffix}")
      names = sorted(module.signatures())
      self.report.traced.append(f"export signatures{suffix} {', '.join(names)}")
    version = from_config.configured_version(self.config)
    self.report.notes.append(f"export version: {version or 'the next free one'}")

  # Inputs --------------------------------------------------------------------------
  def _input_context(self):
    return tf.distribute.InputContext(
        num_input_pipelines=1, input_pipeline_id=0,
        num_replicas_in_sync=self.strategy.num_replicas_in_sync)

  def _train_spec(self):
    """{feature: TensorSpec} of one per-replica training batch (static batch size)."""
    element_spec = self.task.train_dataset(self._input_context()).element_spec
    return {key: tf.TensorSpec([self.per_replica_batch] + spec.shape[1:].as_list(),
                               spec.dtype) for key, spec in element_spec.items()}

  def _synthetic_train_dataset(self, input_context):
    """Endless synthetic per-replica batches of the pipeline's element spec."""
    del input_context
    spec = self._train_spec()
    unknown = {k: s.shape for k, s in spec.items() if not s.shape.is_fully_defined()}
    if unknown:
      raise RehearsalError(f"the training pipeline gives batches of unknown shape "
                           f"{unknown}; set dataset.crop_size")
    return tf.data.Dataset.range(1).repeat().map(lambda _: _synthetic_batch(spec))

  def _train_fields(self):
    return ["dataset.crop_size", "train.batch_size", "model"]

  def _eval_fields(self):
    return ["eval.crop_size", "eval.scales", "eval.batch_size", "model.backbone.span"]


def _synthetic_batch(spec):
  """A batch of `spec`: images uniform in [0, 255], other floats 0.5, ints 0, bools true."""
  batch = {}
  for key, feature in spec.items():
    if key == "image":
      batch[key] = tf.random.stateless_uniform(feature.shape, [0, 0], 0.0, 255.0,
                                               feature.dtype)
    elif feature.dtype.is_floating:
      batch[key] = tf.fill(feature.shape, tf.cast(0.5, feature.dtype))
    elif feature.dtype == tf.bool:
      batch[key] = tf.fill(feature.shape, True)
    else:
      batch[key] = tf.zeros(feature.shape, feature.dtype)
  return batch


def _eval_spec(task, global_batch_size):
  """{feature: TensorSpec} of a padded global eval batch (numeric features + `valid`)."""
  element_spec = task.eval_dataset(global_batch_size).element_spec
  spec = {key: tf.TensorSpec([global_batch_size] + s.shape[1:].as_list(), s.dtype)
          for key, s in element_spec.items() if s.dtype != tf.string}
  spec["valid"] = tf.TensorSpec([global_batch_size], tf.bool)
  return spec


# Memory ------------------------------------------------------------------------------
def estimate_step_memory(model, image_shape):
  """Estimated memory of one training step per replica, in bytes, and what it leaves out.

  The activations, the backward's temporaries and the gradients as
  `deeplab_axial.memory_model` predicts them from the traced step at this exact shape,
  plus `_WEIGHT_COPIES` copies of the trainable weights (the weights, two optimizer
  moments and Lookahead's slow copy). The memory model is within 10% of TF's allocator
  peak for Axial-ResNet-S at 224²-769² (benchmarks/README.md, "Memory model"); the
  run/trace decision keeps `_MEMORY_HEADROOM` for the runtime's own memory, which the
  process's resident size adds to that.

  Args:
    model: the built Keras model.
    image_shape: [batch, height, width, channels] of one replica's training batch.

  Returns:
    (bytes, number of tensors whose size is unknown in the traced graph and not counted;
    e.g. resizes to a dynamically computed size).
  """
  batch, height, width, channels = image_shape
  activations, unknown = memory_model.training_step_peak_bytes(model, batch,
                                                               (height, width), channels)
  weights = sum(v.shape.num_elements() * v.dtype.size for v in model.trainable_variables)
  return int(activations + _WEIGHT_COPIES * weights), unknown


def available_memory_bytes(meminfo="/proc/meminfo"):
  """`MemAvailable` of /proc/meminfo in bytes (a large number where it is unknown)."""
  try:
    with open(meminfo) as f:
      for line in f:
        if line.startswith("MemAvailable:"):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  return 1 << 50


def _print(message):
  print(message, flush=True)


def _gigabytes(count):
  return f"{count / 2**30:.1f} GiB"


# Problem lines -----------------------------------------------------------------------
def _problem_line(stage, fields, error):
  """One line for a failed stage: the field to change, and the error's own message."""
  message = _first_message(error)
  if "max_global_length" in message:
    return (f"{stage}: model.backbone.span: 0 (global attention) cannot run at this "
            f"crop: {message} Set model.backbone.span (e.g. 65) or a smaller crop "
            f"({', '.join(f for f in fields if 'crop' in f or 'scales' in f)})")
  if isinstance(error, RehearsalError):
    return message
  return f"{stage} failed ({', '.join(fields)}): {message}"


def _first_message(error):
  """The error's message on one line, without Keras' "Exception encountered when calling
  layer" wrapper and its "Call arguments" listing."""
  text = str(error)
  text = re.split(r"\n\s*Call arguments received", text)[0]
  lines = [line.strip() for line in text.splitlines()
           if line.strip() and not line.strip().startswith("Exception encountered")]
  text = " ".join(lines)
  return text if len(text) <= _MESSAGE_LENGTH else text[:_MESSAGE_LENGTH] + " ..."


__all__ = ["RehearsalError", "RehearsalReport", "available_memory_bytes",
           "estimate_step_memory", "rehearse"]
