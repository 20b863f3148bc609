"""The task interface: what differs between panoptic, semantic and classification runs.

A `Task` (one per `model.meta_architecture`, see `deeplab_axial.tasks.TASKS`) owns its
model, targets, loss, input pipelines, evaluation and serving signature; the trainer
(`deeplab_axial.training`) and the exporter (`deeplab_axial.export`) run any task through
this interface only. Evaluation is split so that one distributed loop
(`deeplab_axial.training.evaluation.EvalLoop`) serves every task:

* inside `strategy.run`, on numeric tensors only (TPU/XLA-safe: no strings, no host
  calls): `TaskEvaluator.predict(batch)` (model, TTA, post-processing; stateless, so the
  loop may XLA-compile it) then `TaskEvaluator.update(batch, predictions,
  with_predictions)`, which updates the streaming metrics and returns the numeric
  per-image outputs the host needs;
* `TaskEvaluator.host_update(batch, gathered, writer)` runs on the host with the whole
  global batch (string features included) and those outputs gathered from every replica
  of every worker: host-side metrics (COCO AP) and prediction writers.

Every batch carries a boolean `valid [batch]`: the loop pads the last global batch with
invalid images so every replica gets the same static batch; `predict`/`update` must make
them count for nothing.
"""
import abc
from typing import Mapping, Optional, Sequence

import tensorflow as tf

from deeplab_axial import losses as losses_lib
from deeplab_axial import ops
from deeplab_axial.models import builder


class TaskEvaluator(abc.ABC):
  """Streaming evaluation state of one task over one model (create under the strategy's
  scope, so metric variables sum across replicas and workers).

  Attributes:
    model_fn: the model evaluated (images -> outputs).
  """

  model_fn = None

  @abc.abstractmethod
  def predict(self, batch: Mapping[str, tf.Tensor]) -> Mapping[str, tf.Tensor]:
    """Per-replica predictions of a batch of numeric features (no state change)."""

  @abc.abstractmethod
  def update(self, batch: Mapping[str, tf.Tensor], predictions: Mapping[str, tf.Tensor],
             with_predictions: bool = False) -> Mapping[str, tf.Tensor]:
    """Updates the streaming metrics; returns the per-image outputs the host needs
    (e.g. for AP, or every prediction when `with_predictions`), possibly none."""

  def host_update(self, batch, gathered, writer=None):
    """Host side of a global batch (NumPy, padding removed); default: nothing."""
    del batch, gathered, writer

  @abc.abstractmethod
  def reset(self):
    """Resets every metric before an evaluation."""

  @abc.abstractmethod
  def results(self) -> dict:
    """Python floats (and NumPy arrays for per-class values) since the last reset."""


class Task(abc.ABC):
  """Base: the config, dataset and file patterns shared by every task.

  Args:
    experiment_config: a loaded `ExperimentOptions`.
    dataset_info: `DatasetInfo` of `dataset.name`.
    train_patterns, eval_patterns: resolved TFRecord globs (empty when only building a
      model, e.g. for export).
  """

  def __init__(self, experiment_config, dataset_info, train_patterns: Sequence[str] = (),
               eval_patterns: Sequence[str] = ()):
    self.config = experiment_config
    self.info = dataset_info
    self.train_patterns = list(train_patterns)
    self.eval_patterns = list(eval_patterns)
    self._loss = None

  # Model and training --------------------------------------------------------------
  def build_model(self):
    """The `builder.build_model` model (call it under `strategy.scope()` to train)."""
    return builder.build_model(self.config, self.info)

  @abc.abstractmethod
  def build_loss(self) -> losses_lib.TaskLoss:
    """The task's loss (per-replica, divided by the global batch size)."""

  @property
  def loss(self) -> losses_lib.TaskLoss:
    if self._loss is None:
      self._loss = self.build_loss()
    return self._loss

  @property
  def loss_names(self):
    return ("total",) + tuple(self.loss.part_names)

  def compute_losses(self, batch, outputs):
    return self.loss(batch, outputs, self.config.train.batch_size)

  @abc.abstractmethod
  def train_dataset(self, input_context) -> tf.data.Dataset:
    """The per-replica training pipeline (for `distribute_datasets_from_function`)."""

  # Evaluation ----------------------------------------------------------------------
  @abc.abstractmethod
  def eval_dataset(self, batch_size: Optional[int] = None) -> tf.data.Dataset:
    """The whole eval split in batches of `batch_size` (default `eval.batch_size`),
    not repeated, not sharded."""

  @abc.abstractmethod
  def create_evaluator(self, model_fn) -> TaskEvaluator:
    """The evaluation state for `model_fn` (images -> model outputs)."""

  def prediction_writer(self, output_dir):
    """A writer of official-format predictions (`eval.save_predictions`), or None."""
    del output_dir
    raise ValueError(f"eval.save_predictions is not available for "
                     f"model.meta_architecture {self.config.model.meta_architecture!r}")

  # Serving -------------------------------------------------------------------------
  @abc.abstractmethod
  def serving_module(self, model, serving_options) -> tf.Module:
    """A `tasks.serving.ServingModule` whose `signatures()` are the exported signatures."""


def valid_mask(batch, rank):
  """`batch["valid"]` broadcastable to a rank-`rank` tensor `[batch, ...]`."""
  valid = tf.cast(batch["valid"], tf.bool)
  return tf.reshape(valid, [-1] + [1] * (rank - 1))


def inside_valid_images(batch, shape):
  """bool `[b, h, w]` (for maps of `shape` `[b, h, w, ...]`): inside each image's
  original `height x width` (the whole map when the batch has no sizes) and False on
  padding images."""
  valid = valid_mask(batch, 1)
  heights = batch["height"] if "height" in batch else tf.fill([shape[0]], shape[1])
  widths = batch["width"] if "width" in batch else tf.fill([shape[0]], shape[2])
  return ops.inside_images_mask(tf.where(valid, heights, 0), tf.where(valid, widths, 0),
                                shape[1], shape[2])


__all__ = ["Task", "TaskEvaluator", "inside_valid_images", "valid_mask"]
