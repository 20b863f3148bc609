"""ImageNet classification: label-smoothed CE; top-1 / top-5 accuracy.

Training crops are Inception-style random-resized crops of `dataset.crop_size` (which must
be square); evaluation resizes the shorter side to `eval.resize_size` and takes the centre
crop (`pipeline.resize_and_center_crop`, which the exported model runs in its graph too).
"""
from typing import Optional

import tensorflow as tf
import tf_keras

from deeplab_axial import losses as losses_lib
from deeplab_axial.data import pipeline
from deeplab_axial.tasks import base
from deeplab_axial.tasks import serving

TOP_CLASSES = 5  # the `top_5` serving output


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

  def serving_module(self, model, serving_options):
    return ClassificationServingModule(model, serving_options, image_size=self.image_size,
                                       resize_size=self.config.eval.resize_size)


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


class ClassificationServingModule(serving.ServingModule):
  """The serving signatures of a classifier, with the evaluation preprocessing in-graph.

  Each image (at its own size, also in a mixed-size bytes batch) goes through
  `pipeline.resize_and_center_crop(image, image_size, resize_size)` — what the
  classification eval pipeline does — then the model. Outputs: `classes` int32 `[b]`
  (argmax), `probabilities` float32 `[b, num_classes]` (softmax), `top_5` int32 `[b, 5]`
  (classes by decreasing logit), `image_height`, `image_width` int32 `[b]`. The size
  rule and `static_size` of `ServingOptions` do not apply (the model always runs at
  `image_size x image_size`).

  Args:
    model: a `tf_keras.Model` on float32 images `[b, h, w, 3]` in [0, 255] returning
      logits `[b, num_classes]` (`builder.build_classifier`).
    options: a `ServingOptions` (pad_value, jit_compile are used).
    image_size: side of the square crop the model sees (`dataset.crop_size`).
    resize_size: shorter side before the crop (`eval.resize_size`).
  """

  TASK = "classification"

  def __init__(self, model, options, *, image_size, resize_size,
               name="classification_serving"):
    if not 1 <= image_size <= resize_size:
      raise ValueError(f"need 1 <= image_size <= resize_size, got image_size={image_size}, "
                       f"resize_size={resize_size}")
    super().__init__(model, options, name=name)
    self._image_size = int(image_size)
    self._resize_size = int(resize_size)

  def _run(self, images, sizes):
    size = self._image_size

    def preprocess(args):
      image, (height, width) = args[0], tf.unstack(args[1])
      return pipeline.resize_and_center_crop(image[:height, :width], size, self._resize_size)

    crops = tf.map_fn(preprocess, (images, sizes),
                      fn_output_signature=tf.TensorSpec([size, size, 3], tf.float32))
    return self._infer_fn(crops)

  def _infer(self, images):
    logits = tf.cast(self._model_fn(images), tf.float32)
    if logits.shape.rank != 2:
      raise ValueError(f"the model must return logits [batch, num_classes] (a "
                       f"classifier), got shape {logits.shape}")
    top = min(TOP_CLASSES, logits.shape[-1])
    return {"classes": tf.argmax(logits, axis=-1, output_type=tf.int32),
            "probabilities": tf.nn.softmax(logits, axis=-1),
            "top_5": tf.math.top_k(logits, k=top).indices}

  def _void_values(self):
    return {}


__all__ = ["ClassificationEvaluator", "ClassificationServingModule", "ClassificationTask",
           "TOP_CLASSES"]
