"""The three tasks an experiment can run, one class per `model.meta_architecture`.

A task knows everything task-specific about an experiment; `experiment.py` runs any of
them through the same train/eval/checkpoint logic:

  * `build_model()`: the `builder.build_model` model (call it under `strategy.scope()`);
  * `loss_names` and `compute_losses(batch, outputs)`: per-replica losses, each already
    divided by the *global* batch size (see `deeplab_axial.losses.TaskLoss`);
  * `train_dataset(input_context)`: the per-replica training pipeline;
  * `evaluate(model, num_steps)`: a full evaluation, returning a dict of metrics (Python
    floats, plus NumPy arrays for per-class values).

`PanopticTask` (Panoptic-DeepLab: PQ, mIoU, AP), `SemanticTask` (semantic segmentation with
the context heads: mIoU, plus the boundary F-score for Gated-SCNN) and `ClassificationTask`
(ImageNet: top-1/top-5 accuracy). `create_task(...)` picks one from the config.
"""
import numpy as np
import tensorflow as tf
import tf_keras

from deeplab_axial import losses as losses_lib
from deeplab_axial import metrics as metrics_lib
from deeplab_axial.data import pipeline
from deeplab_axial.metrics import boundary as boundary_metrics
from deeplab_axial.models import builder
from deeplab_axial.ops import boundaries
from deeplab_axial.training import evaluation

# Gated-SCNN reports the boundary F-score at 3 px (and wider tolerances) on Cityscapes.
BOUNDARY_TOLERANCE_PX = 3


class Task:
  """Base: the config, dataset and file patterns shared by every task.

  Args:
    experiment_config: a loaded `ExperimentOptions`.
    dataset_info: the dataset's `DatasetInfo` (`datasets.dataset_info_from_config`).
    strategy: the `tf.distribute.Strategy` the experiment runs under.
    train_patterns, eval_patterns: resolved TFRecord globs.
  """

  def __init__(self, experiment_config, dataset_info, strategy, train_patterns,
               eval_patterns):
    self.config = experiment_config
    self.info = dataset_info
    self.strategy = strategy
    self.train_patterns = list(train_patterns)
    self.eval_patterns = list(eval_patterns)
    self.loss = self._build_loss()

  def _build_loss(self) -> losses_lib.TaskLoss:
    raise NotImplementedError

  def build_model(self):
    return builder.build_model(self.config, self.info)

  @property
  def loss_names(self):
    return ("total",) + tuple(self.loss.part_names)

  def compute_losses(self, batch, outputs):
    return self.loss(batch, outputs, self.config.train.batch_size)

  def train_dataset(self, input_context):
    raise NotImplementedError

  def evaluate(self, model, num_steps=None):
    raise NotImplementedError


class _SegmentationTask(Task):
  """Panoptic records (image + panoptic PNG) in, augmented the same way for both tasks."""

  def _augmented_dataset(self, input_context, generate_targets):
    return pipeline.build_panoptic_dataset(
        self.train_patterns, self.info, is_training=True,
        batch_size=self.config.train.batch_size, seed=self.config.train.seed,
        generate_targets=generate_targets, input_context=input_context,
        **pipeline.panoptic_options_from_config(self.config.dataset, is_training=True))

  def eval_dataset(self):
    eval_options = self.config.eval
    crop = tuple(eval_options.crop_size) or tuple(self.info.eval_crop_size or ()) or None
    return pipeline.build_panoptic_dataset(
        self.eval_patterns, self.info, is_training=False, batch_size=eval_options.batch_size,
        crop_size=crop, generate_targets=False,
        **pipeline.panoptic_options_from_config(self.config.dataset, is_training=False))


class PanopticTask(_SegmentationTask):
  """Panoptic-DeepLab: bootstrapped CE + centre MSE + offset L1; PQ / mIoU (/ AP)."""

  def __init__(self, *args, **kwargs):
    super().__init__(*args, **kwargs)
    self._evaluator = None

  def _build_loss(self):
    loss = self.config.loss
    # The loop checks finiteness itself (it names the step); XLA would drop the assert.
    return losses_lib.PanopticDeepLabLoss(
        semantic_weight=loss.semantic_weight, center_weight=loss.center_weight,
        offset_weight=loss.offset_weight, top_k_fraction=loss.semantic_top_k,
        ignore_label=self.info.ignore_label, check_finite=False)

  def train_dataset(self, input_context):
    return self._augmented_dataset(input_context, generate_targets=True)

  def _evaluator_for(self, model):
    if self._evaluator is None or self._evaluator.model_fn is not model:
      eval_options = self.config.eval
      post_processor = evaluation.default_post_processor(
          self.info.thing_class_ids, self.info.label_divisor, self.info.ignore_label,
          center_threshold=eval_options.center_threshold, nms_kernel=eval_options.nms_kernel,
          top_k=eval_options.top_k,
          stuff_area=eval_options.stuff_area or self.info.stuff_area)
      self._evaluator = evaluation.Evaluator(
          model, post_processor, num_classes=self.info.num_classes,
          ignore_label=self.info.ignore_label, label_divisor=self.info.label_divisor,
          thing_classes=self.info.thing_class_ids, strategy=self.strategy,
          scales=tuple(eval_options.scales) or (1.0,), flip=eval_options.flip,
          compute_ap="ap" in eval_options.metrics)
    return self._evaluator

  def evaluate(self, model, num_steps=None, prediction_writer=None):
    return self._evaluator_for(model).evaluate(self.eval_dataset(), num_steps=num_steps,
                                               prediction_writer=prediction_writer)

  def post_process_fn(self, model):
    """The panoptic post-processor (probabilities in) used when evaluating `model`."""
    return self._evaluator_for(model).post_process_fn


def predict_semantic_with_tta(model_fn, images, scales=(1.0,), flip=False):
  """Mean softmax of `semantic_logits` over rescaled (and mirrored) copies.

  Args:
    model_fn: images -> dict with `semantic_logits [b, h', w', classes]` at the size of
      its input.
    images: float `[b, h, w, 3]` in [0, 255].
    scales: positive factors; each copy is bilinearly resized by it and its logits resized
      back to `[h, w]`.
    flip: also run horizontally mirrored copies (flipped back before averaging).

  Returns:
    float32 `[b, h, w, classes]` class probabilities.
  """
  images = tf.cast(images, tf.float32)
  input_size = tf.shape(images)[1:3]
  total, count = None, 0
  for scale in scales:
    scaled_size = tf.maximum(tf.cast(tf.round(tf.cast(input_size, tf.float32) * scale),
                                     tf.int32), 1)
    scaled = images if scale == 1.0 else tf.image.resize(images, scaled_size)
    for mirrored in ((False, True) if flip else (False,)):
      logits = tf.cast(model_fn(tf.reverse(scaled, axis=[2]) if mirrored else scaled)
                       ["semantic_logits"], tf.float32)
      if mirrored:
        logits = tf.reverse(logits, axis=[2])
      if scale != 1.0:
        logits = tf.image.resize(logits, input_size)
      probabilities = tf.nn.softmax(logits, axis=-1)
      total = probabilities if total is None else total + probabilities
      count += 1
  return total / float(count)


def _run_distributed(strategy, step_fn, dataset, num_steps):
  """Calls `step_fn` on each distributed global batch of `dataset` (at most num_steps)."""
  for step, batch in enumerate(strategy.experimental_distribute_dataset(dataset)):
    if num_steps is not None and step >= num_steps:
      break
    step_fn(batch)


class SemanticEvaluator:
  """Streaming mIoU (and boundary F-score) of a semantic model over panoptic records.

  Ground truth is `panoptic // label_divisor` (void and padding are `ignore_label`);
  predictions are the argmax of `predict_semantic_with_tta`. Metric variables live under
  `strategy.scope()` and sum across replicas.

  Args:
    model_fn: images -> dict with `semantic_logits`.
    num_classes, ignore_label, label_divisor: the dataset's label space.
    strategy: a `tf.distribute.Strategy`.
    scales, flip: test-time augmentation.
    boundary_tolerance_px: also report `boundary_f_score` (with `boundary_precision`,
      `boundary_recall`) at this tolerance; None = off.
  """

  def __init__(self, model_fn, *, num_classes, ignore_label, label_divisor, strategy,
               scales=(1.0,), flip=False, boundary_tolerance_px=None):
    self.model_fn = model_fn
    self.label_divisor = int(label_divisor)
    self.strategy = strategy
    self.scales = tuple(scales)
    self.flip = bool(flip)
    with strategy.scope():
      self.mean_iou = metrics_lib.MeanIoU(num_classes=num_classes, ignore_label=ignore_label)
      self.boundary_f_score = None if boundary_tolerance_px is None else (
          boundary_metrics.BoundaryFScore(num_classes, boundary_tolerance_px, ignore_label))
    self._step = tf.function(self._distributed_step, reduce_retracing=True)

  def _replica_step(self, batch):
    probabilities = predict_semantic_with_tta(self.model_fn, batch["image"], self.scales,
                                              self.flip)
    # dataset.resize_long_side: compare at the original image size (outside is ignored).
    prediction = pipeline.predictions_to_label_frame(
        tf.argmax(probabilities, axis=-1, output_type=tf.int32), batch)
    labels = batch["panoptic"] // self.label_divisor
    self.mean_iou.update_state(labels, prediction)
    if self.boundary_f_score is not None:
      self.boundary_f_score.update_state(labels, prediction)

  def _distributed_step(self, batch):
    self.strategy.run(self._replica_step, args=(batch,))

  def evaluate(self, dataset, num_steps=None):
    """Returns `miou`, `per_class_iou` (and `boundary_f_score`, `boundary_precision`,
    `boundary_recall`) over `dataset` (global batches) or its first `num_steps`."""
    metrics = [m for m in (self.mean_iou, self.boundary_f_score) if m is not None]
    for metric in metrics:
      metric.reset_state()
    _run_distributed(self.strategy, self._step, dataset, num_steps)
    semantic = self.mean_iou.result()
    results = {"miou": float(semantic["miou"]),
               "per_class_iou": np.asarray(semantic["per_class_iou"])}
    if self.boundary_f_score is not None:
      boundary = self.boundary_f_score.result()
      results.update(boundary_f_score=float(boundary["f_score"]),
                     boundary_precision=float(boundary["precision"]),
                     boundary_recall=float(boundary["recall"]))
    return results


class SemanticTask(_SegmentationTask):
  """Semantic segmentation (context heads or the Panoptic-DeepLab semantic branch).

  Targets: `semantic = panoptic // label_divisor` (void = ignore_label) and, for
  Gated-SCNN, `boundary = ops.semantic_boundaries(semantic)`, made in the input pipeline.
  Loss: CE (bootstrapped when loss.semantic_top_k < 1, label-smoothed by
  loss.label_smoothing) + each head's auxiliary terms (DANet branch logits, Gated-SCNN
  boundary BCE + dual-task regularizer); SegViT uses its ATM loss instead.
  """

  def __init__(self, *args, **kwargs):
    super().__init__(*args, **kwargs)
    self._evaluator = None

  @property
  def head_type(self):
    return self.config.model.context_head.type

  def _build_loss(self):
    loss, head = self.config.loss, self.config.model.context_head
    ignore_label = self.info.ignore_label
    if head.type == "segvit":
      return losses_lib.SegVitLoss(ignore_label=ignore_label, check_finite=False)
    common = {"semantic_weight": loss.semantic_weight, "top_k_fraction": loss.semantic_top_k,
              "ignore_label": ignore_label, "label_smoothing": loss.label_smoothing,
              "check_finite": False}
    if head.type == "gated_scnn":
      return losses_lib.GatedScnnLoss(
          boundary_weight=head.gated_scnn.boundary_loss_weight,
          dual_task_weight=head.gated_scnn.dual_task_loss_weight, **common)
    auxiliary = ({"position_logits": head.danet.aux_loss_weight,
                  "channel_logits": head.danet.aux_loss_weight}
                 if head.type == "danet" else None)
    return losses_lib.SemanticSegmentationLoss(auxiliary_weights=auxiliary, **common)

  def _add_semantic_targets(self, batch):
    semantic = batch["panoptic"] // self.info.label_divisor
    targets = {"image": batch["image"], "semantic": semantic}
    if self.head_type == "gated_scnn":
      targets["boundary"] = boundaries.semantic_boundaries(semantic, self.info.ignore_label)
    return targets

  def train_dataset(self, input_context):
    dataset = self._augmented_dataset(input_context, generate_targets=False)
    return dataset.map(self._add_semantic_targets,
                       num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)

  def evaluate(self, model, num_steps=None):
    if self._evaluator is None or self._evaluator.model_fn is not model:
      eval_options = self.config.eval
      self._evaluator = SemanticEvaluator(
          model, num_classes=self.info.num_classes, ignore_label=self.info.ignore_label,
          label_divisor=self.info.label_divisor, strategy=self.strategy,
          scales=tuple(eval_options.scales) or (1.0,), flip=eval_options.flip,
          boundary_tolerance_px=(BOUNDARY_TOLERANCE_PX if self.head_type == "gated_scnn"
                                 else None))
    return self._evaluator.evaluate(self.eval_dataset(), num_steps=num_steps)


class ClassificationEvaluator:
  """Streaming top-k accuracy of a classifier (`model_fn(images)` -> logits `[b, C]`).

  Args:
    model_fn: images -> logits.
    strategy: a `tf.distribute.Strategy`; metric variables sum across replicas.
    metrics: names among `TOP_K` ("top1", "top5").
  """

  TOP_K = {"top1": 1, "top5": 5}

  def __init__(self, model_fn, *, strategy, metrics=("top1", "top5")):
    unknown = [m for m in metrics if m not in self.TOP_K]
    if unknown:
      raise ValueError(f"classification metrics {unknown} unknown; expected names from "
                       f"{sorted(self.TOP_K)}")
    self.model_fn = model_fn
    self.strategy = strategy
    with strategy.scope():
      self.metrics = {name: tf_keras.metrics.SparseTopKCategoricalAccuracy(
          k=self.TOP_K[name], name=name) for name in metrics}
    self._step = tf.function(self._distributed_step, reduce_retracing=True)

  def _replica_step(self, batch):
    logits = tf.cast(self.model_fn(batch["image"], training=False), tf.float32)
    for metric in self.metrics.values():
      metric.update_state(batch["label"], logits)

  def _distributed_step(self, batch):
    self.strategy.run(self._replica_step, args=(batch,))

  def evaluate(self, dataset, num_steps=None):
    """Returns {metric name: accuracy in [0, 1]} over `dataset` (global batches)."""
    for metric in self.metrics.values():
      metric.reset_state()
    _run_distributed(self.strategy, self._step, dataset, num_steps)
    return {name: float(metric.result()) for name, metric in self.metrics.items()}


class ClassificationTask(Task):
  """ImageNet classification: label-smoothed CE; top-1 / top-5 accuracy.

  Training crops are Inception-style random-resized crops of `dataset.crop_size` (which
  must be square); evaluation resizes the shorter side to `eval.resize_size` and takes
  the centre crop.
  """

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
    self._evaluator = None

  def _build_loss(self):
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

  def eval_dataset(self):
    return pipeline.build_classification_dataset(
        self.eval_patterns, is_training=False, batch_size=self.config.eval.batch_size,
        image_size=self.image_size, resize_size=self.config.eval.resize_size)

  def evaluate(self, model, num_steps=None):
    if self._evaluator is None or self._evaluator.model_fn is not model:
      metrics = tuple(m for m in self.config.eval.metrics if m in ClassificationEvaluator.TOP_K)
      self._evaluator = ClassificationEvaluator(model, strategy=self.strategy,
                                                metrics=metrics or ("top1", "top5"))
    return self._evaluator.evaluate(self.eval_dataset(), num_steps=num_steps)


_TASKS = {"panoptic_deeplab": PanopticTask, "semantic": SemanticTask,
          "classification": ClassificationTask}


def create_task(experiment_config, dataset_info, strategy, train_patterns, eval_patterns):
  """The `Task` of `model.meta_architecture`.

  Raises:
    ValueError: an unknown meta-architecture.
  """
  meta = experiment_config.model.meta_architecture
  if meta not in _TASKS:
    raise ValueError(f"model.meta_architecture {meta!r} is not one of {sorted(_TASKS)}")
  return _TASKS[meta](experiment_config, dataset_info, strategy, train_patterns,
                      eval_patterns)
