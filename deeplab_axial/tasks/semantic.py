"""Semantic segmentation (context heads, or the Panoptic-DeepLab semantic branch alone).

Targets: `ops.semantic_labels` of the panoptic labels (void, and crowd with
`targets.ignore_crowd_in_semantic`, become `ignore_label`) and, for Gated-SCNN,
`boundary = ops.semantic_boundaries(semantic)`, made in the input pipeline. Loss: CE
(bootstrapped when loss.semantic_top_k < 1, label-smoothed by loss.label_smoothing) + each
head's auxiliary terms (DANet branch logits, Gated-SCNN boundary BCE + dual-task
regularizer); SegViT uses its ATM loss. Evaluation: TTA (`tasks.tta`) then streaming mIoU
(and the boundary F-score for Gated-SCNN). Serving: `SemanticServingModule`.
"""
import numpy as np
import tensorflow as tf

from deeplab_axial import losses as losses_lib
from deeplab_axial import metrics as metrics_lib
from deeplab_axial.data import pipeline
from deeplab_axial.metrics import boundary as boundary_metrics
from deeplab_axial.ops import boundaries
from deeplab_axial.ops import panoptic_targets
from deeplab_axial.tasks import base
from deeplab_axial.tasks import segmentation
from deeplab_axial.tasks import serving
from deeplab_axial.tasks import tta

# Gated-SCNN reports the boundary F-score at 3 px (and wider tolerances) on Cityscapes.
BOUNDARY_TOLERANCE_PX = 3


def semantic_targets(batch, dataset_info, *, ignore_crowd_in_semantic=False,
                     with_boundary=False):
  """`{"image", "semantic"(, "boundary")}` of a batch of panoptic training examples.

  Args:
    batch: dict with `image` and int `panoptic [batch, height, width]`.
    dataset_info: the `DatasetInfo` (label divisor, ignore label, thing ids).
    ignore_crowd_in_semantic: crowd pixels become `ignore_label` (as in the panoptic
      task's targets).
    with_boundary: add `boundary = ops.semantic_boundaries(semantic)` (Gated-SCNN).
  """
  semantic = panoptic_targets.semantic_labels(
      batch["panoptic"], label_divisor=dataset_info.label_divisor,
      ignore_label=dataset_info.ignore_label, thing_class_ids=dataset_info.thing_class_ids,
      ignore_crowd_in_semantic=ignore_crowd_in_semantic)
  targets = {"image": batch["image"], "semantic": semantic}
  if with_boundary:
    targets["boundary"] = boundaries.semantic_boundaries(semantic, dataset_info.ignore_label)
  return targets


class SemanticTask(segmentation.SegmentationTask):
  """Semantic segmentation: CE (+ head terms); mIoU (+ boundary F for Gated-SCNN)."""

  @property
  def head_type(self):
    return self.config.model.context_head.type

  def build_loss(self):
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

  def train_dataset(self, input_context):
    dataset = self.augmented_dataset(input_context, generate_targets=False)
    ignore_crowd = self.config.dataset.targets.ignore_crowd_in_semantic
    with_boundary = self.head_type == "gated_scnn"
    add_targets = pipeline.graph_map_fn(
        lambda batch: semantic_targets(batch, self.info,
                                       ignore_crowd_in_semantic=ignore_crowd,
                                       with_boundary=with_boundary))
    return dataset.map(add_targets, num_parallel_calls=tf.data.AUTOTUNE).prefetch(
        tf.data.AUTOTUNE)

  def create_evaluator(self, model_fn):
    return SemanticEvaluator(
        model_fn, num_classes=self.info.num_classes, ignore_label=self.info.ignore_label,
        label_divisor=self.info.label_divisor, scales=self.scales,
        flip=self.config.eval.flip,
        boundary_tolerance_px=(BOUNDARY_TOLERANCE_PX if self.head_type == "gated_scnn"
                               else None))

  def serving_module(self, model, serving_options):
    return SemanticServingModule(model, serving_options)


class SemanticEvaluator(base.TaskEvaluator):
  """Streaming mIoU (and boundary F-score) of a semantic model over panoptic records.

  Ground truth is `panoptic // label_divisor` (void, padding and padding images are
  `ignore_label`); predictions are the argmax of `tta.predict_with_tta`, void outside
  each image's `height x width`.

  Args:
    model_fn: images -> dict with `semantic_logits`.
    num_classes, ignore_label, label_divisor: the dataset's label space.
    scales, flip: test-time augmentation.
    boundary_tolerance_px: also report `boundary_f_score` (with `boundary_precision`,
      `boundary_recall`) at this tolerance; None = off.
  """

  def __init__(self, model_fn, *, num_classes, ignore_label, label_divisor, scales=(1.0,),
               flip=False, boundary_tolerance_px=None):
    self.model_fn = model_fn
    self.ignore_label = int(ignore_label)
    self.label_divisor = int(label_divisor)
    self.scales = tuple(scales)
    self.flip = bool(flip)
    self.mean_iou = metrics_lib.MeanIoU(num_classes=num_classes, ignore_label=ignore_label)
    self.boundary_f_score = None if boundary_tolerance_px is None else (
        boundary_metrics.BoundaryFScore(num_classes, boundary_tolerance_px, ignore_label))

  def _metrics(self):
    return [m for m in (self.mean_iou, self.boundary_f_score) if m is not None]

  def predict(self, batch):
    """The argmax class and the labels, both `ignore_label` outside each image."""
    probabilities = tta.predict_with_tta(self.model_fn, batch["image"], self.scales,
                                         self.flip, keys=tta.SEMANTIC_KEYS)["semantic_probs"]
    # dataset.resize_long_side: compare at each image's original size.
    prediction = pipeline.predictions_to_label_frame(
        tf.argmax(probabilities, axis=-1, output_type=tf.int32), batch, self.ignore_label)
    inside = base.inside_valid_images(batch, tf.shape(prediction))
    return {"semantic": tf.where(inside, prediction, self.ignore_label),
            "labels": tf.where(inside, batch["panoptic"] // self.label_divisor,
                               self.ignore_label)}

  def update(self, batch, predictions, with_predictions=False):
    del batch, with_predictions  # no prediction writer for semantic segmentation yet
    for metric in self._metrics():
      metric.update_state(predictions["labels"], predictions["semantic"])
    return {}

  def reset(self):
    for metric in self._metrics():
      metric.reset_state()

  def results(self):
    """`miou`, `per_class_iou` (and `boundary_f_score`, `boundary_precision`,
    `boundary_recall`)."""
    semantic = self.mean_iou.result()
    results = {"miou": float(semantic["miou"]),
               "per_class_iou": np.asarray(semantic["per_class_iou"])}
    if self.boundary_f_score is not None:
      boundary = self.boundary_f_score.result()
      results.update(boundary_f_score=float(boundary["f_score"]),
                     boundary_precision=float(boundary["precision"]),
                     boundary_recall=float(boundary["recall"]))
    return results


class SemanticServingModule(serving.ServingModule):
  """The serving signatures of a semantic model (see `export.saved_model`).

  Outputs (maps `[b, h, w]`, void outside each image): `semantic` int32 argmax class
  (`ignore_label` outside), `semantic_probs` float32 `[b, h, w, classes]` softmax (0
  outside; omitted with `include_semantic_probs=False`) and, for a model with
  `boundary_logits` (Gated-SCNN), `boundary` float32 sigmoid probabilities (0 outside).
  The class is the argmax of the softmax, computed as `SemanticEvaluator.predict` does.

  Args:
    model: a `tf_keras.Model` on float32 images `[b, h, w, 3]` in [0, 255] returning a
      dict with `semantic_logits` at input resolution (any `build_semantic_model`).
    options: a `ServingOptions` (only the label space and serving fields are used).
  """

  TASK = "semantic"

  def __init__(self, model, options, name="semantic_serving"):
    super().__init__(model, options, name=name)

  def _infer(self, images):
    predictions = self._model_outputs(images, tta.SEMANTIC_KEYS)
    probs = tf.nn.softmax(tf.cast(predictions["semantic_logits"], tf.float32), axis=-1)
    outputs = {"semantic": tf.argmax(probs, axis=-1, output_type=tf.int32)}
    if self._options.include_semantic_probs:
      outputs["semantic_probs"] = probs
    if "boundary_logits" in predictions:
      outputs["boundary"] = tf.sigmoid(
          tf.cast(predictions["boundary_logits"], tf.float32))[..., 0]
    return outputs

  def _void_values(self):
    return {"semantic": self._options.post_processing.ignore_label, "semantic_probs": 0.0, "boundary": 0.0}


__all__ = ["BOUNDARY_TOLERANCE_PX", "SemanticEvaluator", "SemanticServingModule",
           "SemanticTask", "semantic_targets"]
