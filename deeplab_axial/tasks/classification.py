"""ImageNet classification: label-smoothed CE; top-1 / top-5 accuracy.

Training crops are Inception-style random-resized crops of `dataset.crop_size` (which must
be square); evaluation resizes the shorter side to `eval.resize_size` and takes the centre
crop.
"""
from typing import Optional

import tensorflow as tf
import tf_keras

from deeplab_axial import losses as losses_lib
from deeplab_axial.data import pipeline
from deeplab_axial.tasks import base


class ClassificationTask(base.Task):
  """ImageNet classification (see the module docstring)."""

  def __init__(self, *args, **kwargs):
    super().__init__(*args, **kwargs)
    height, width = self.config.dataset.crop_size
    if height != width:
      raise ValueError(f"dataset.crop_size {[height, width]} must be square for "
                       "classification (the pipeline crops image_size x image_size)")
    if not self.config.dataset.augmentation.random_resized_crop:
      raise ValueError("dataset.augmentation.random_resized_crop = false: classification "
                       "training uses the Inception-style random-resized crop; set it true")
    self.image_size = height

  def build_loss(self):
    return losses_lib.ClassificationLoss(label_smoothing=self.config.loss.label_smoothing,
                                         check_finite=False)

  def train_dataset(self, input_context):
    dataset = self.config.dataset
    return pipeline.build_classification_dataset(
        self.train_patterns, is_training=True, batch_size=self.config.train.batch_size,
        image_size=self.image_size, resize_size=max(self.config.eval.resize_size,
                                                    self.image_size),
        flip=dataset.augmentation.horizontal_flip, shuffle_buffer=dataset.shuffle_buffer_size,
        seed=self.config.train.seed, input_context=input_context)

  def eval_dataset(self, batch_size: Optional[int] = None):
    return pipeline.build_classification_dataset(
        self.eval_patterns, is_training=False,
        batch_size=batch_size or self.config.eval.batch_size,
        image_size=self.image_size, resize_size=self.config.eval.resize_size)

  def create_evaluator(self, model_fn):
    metrics = tuple(m for m in self.config.eval.metrics if m in ClassificationEvaluator.TOP_K)
    return ClassificationEvaluator(model_fn, metrics=metrics or ("top1", "top5"))


class ClassificationEvaluator(base.TaskEvaluator):
  """Streaming top-k accuracy of a classifier (`model_fn(images)` -> logits `[b, C]`).

  Args:
    model_fn: images -> logits.
    metrics: names among `TOP_K` ("top1", "top5").
  """

  TOP_K = {"top1": 1, "top5": 5}

  def __init__(self, model_fn, *, metrics=("top1", "top5")):
    unknown = [m for m in metrics if m not in self.TOP_K]
    if unknown:
      raise ValueError(f"classification metrics {unknown} unknown; expected names from "
                       f"{sorted(self.TOP_K)}")
    self.model_fn = model_fn
    self.metrics = {name: tf_keras.metrics.SparseTopKCategoricalAccuracy(
        k=self.TOP_K[name], name=name) for name in metrics}

  def predict(self, batch):
    return {"logits": tf.cast(self.model_fn(batch["image"], training=False), tf.float32)}

  def update(self, batch, predictions, with_predictions=False):
    del with_predictions
    weights = tf.cast(batch["valid"], tf.float32)  # padding images count for nothing
    for metric in self.metrics.values():
      metric.update_state(batch["label"], predictions["logits"], sample_weight=weights)
    return {}

  def reset(self):
    for metric in self.metrics.values():
      metric.reset_state()

  def results(self):
    """{metric name: accuracy in [0, 1]}."""
    return {name: float(metric.result()) for name, metric in self.metrics.items()}


__all__ = ["ClassificationEvaluator", "ClassificationTask"]
