"""Panoptic-DeepLab: targets, loss, PQ / mIoU / AP evaluation, writer and serving.

Targets: `ops.generate_panoptic_targets` in the input pipeline (semantic with
`targets.ignore_crowd_in_semantic`, centre heatmap, offsets and their weights). Loss:
bootstrapped CE + centre MSE + offset L1. Evaluation: multi-scale/flip TTA
(`tasks.tta`), `PostProcessingOptions` (`resolve_post_processing`), streaming PQ and mIoU
on the replicas; COCO mask AP (pycocotools) on the host from the predictions of every
replica of every worker (gathered by the eval loop).
"""
import numpy as np
import tensorflow as tf

from deeplab_axial import losses as losses_lib
from deeplab_axial import metrics as metrics_lib
from deeplab_axial.data import pipeline
from deeplab_axial.data import prediction_writers
from deeplab_axial.tasks import base
from deeplab_axial.tasks import post_processing as post_processing_lib
from deeplab_axial.tasks import segmentation
from deeplab_axial.tasks import serving
from deeplab_axial.tasks import tta

REQUIRED_MODEL_OUTPUTS = tta.PANOPTIC_KEYS
# Post-processing outputs AP needs on the host (with `panoptic`).
_AP_OUTPUTS = ("instance_panoptic_ids", "instance_scores")


class PanopticTask(segmentation.SegmentationTask):
  """Panoptic-DeepLab: bootstrapped CE + centre MSE + offset L1; PQ / mIoU (/ AP)."""

  @property
  def post_processing(self) -> post_processing_lib.PostProcessingOptions:
    return post_processing_lib.post_processing_from_config(self.config, self.info)

  def build_loss(self):
    loss = self.config.loss
    # The loop checks finiteness itself (it names the step); XLA would drop the assert.
    return losses_lib.PanopticDeepLabLoss(
        semantic_weight=loss.semantic_weight, center_weight=loss.center_weight,
        offset_weight=loss.offset_weight, top_k_fraction=loss.semantic_top_k,
        ignore_label=self.info.ignore_label, check_finite=False)

  def train_dataset(self, input_context):
    return self.augmented_dataset(input_context, generate_targets=True)

  def create_evaluator(self, model_fn):
    eval_options = self.config.eval
    return PanopticEvaluator(
        model_fn, self.post_processing, num_classes=self.info.num_classes,
        scales=self.scales, flip=eval_options.flip, compute_ap="ap" in eval_options.metrics)

  def prediction_writer(self, output_dir):
    return prediction_writers.writer_for_dataset(self.info, output_dir)

  def serving_module(self, model, serving_options):
    return PanopticServingModule(model, serving_options)


class PanopticEvaluator(base.TaskEvaluator):
  """PQ, mIoU (replicas) and instance AP (host) of a Panoptic-DeepLab model.

  Per batch, inside `strategy.run`: `predict_with_tta`, `post_processing`, predictions
  outside each image's `height x width` (and on padding images) made void, then the
  streaming `PanopticQuality` and `MeanIoU` updates. With `compute_ap` (or a prediction
  writer) the replica returns `panoptic`, `instance_panoptic_ids` and `instance_scores`,
  which the loop gathers from all replicas; `host_update` feeds them to `InstanceAP` and
  the writer.

  Args:
    model_fn: images -> dict of head outputs.
    post_processing: a `PostProcessingOptions`.
    num_classes: number of semantic classes.
    scales, flip: test-time augmentation, see `tta.predict_with_tta`.
    compute_ap: also report COCO mask AP (`ap`, `ap50`, `ap75`, ...).
  """

  def __init__(self, model_fn, post_processing, *, num_classes, scales=(1.0,), flip=False,
               compute_ap=False):
    self.model_fn = model_fn
    self.post_processing = post_processing
    self.scales = tuple(scales)
    self.flip = bool(flip)
    label_space = {"num_classes": num_classes, "ignore_label": post_processing.ignore_label,
                   "label_divisor": post_processing.label_divisor,
                   "thing_classes": post_processing.thing_class_ids}
    self.panoptic_quality = metrics_lib.PanopticQuality(**label_space)
    self.mean_iou = metrics_lib.MeanIoU(num_classes=num_classes,
                                        ignore_label=post_processing.ignore_label)
    self.instance_ap = metrics_lib.InstanceAP(**label_space) if compute_ap else None

  @property
  def _void_panoptic(self):
    return self.post_processing.ignore_label * self.post_processing.label_divisor

  def predict(self, batch):
    """Panoptic and semantic maps (void outside each image and on padding images), and the
    instance slots, of a batch."""
    predictions = tta.predict_with_tta(self.model_fn, batch["image"], self.scales, self.flip)
    outputs = self.post_processing(predictions["semantic_probs"],
                                   predictions["center_heatmap"],
                                   predictions["center_offset"])
    # dataset.resize_long_side: metrics and writers see each image at its original size.
    outputs = dict(
        outputs,
        panoptic=pipeline.predictions_to_label_frame(outputs["panoptic"], batch,
                                                     self._void_panoptic),
        semantic=pipeline.predictions_to_label_frame(outputs["semantic"], batch,
                                                     self.post_processing.ignore_label))
    # Predictions on the padding become void, so the metrics see only the original
    # images (as the exported model, which runs on them unpadded, does).
    inside = base.inside_valid_images(batch, tf.shape(outputs["panoptic"]))
    predicted = {key: outputs[key] for key in _AP_OUTPUTS}
    predicted["panoptic"] = tf.where(inside, outputs["panoptic"], self._void_panoptic)
    predicted["semantic"] = tf.where(inside, outputs["semantic"],
                                     self.post_processing.ignore_label)
    return predicted

  def update(self, batch, predictions, with_predictions=False):
    ground_truth = tf.where(base.valid_mask(batch, 3), batch["panoptic"], self._void_panoptic)
    self.panoptic_quality.update_state(ground_truth, predictions["panoptic"])
    self.mean_iou.update_state(ground_truth // self.post_processing.label_divisor,
                               predictions["semantic"])
    if self.instance_ap is None and not with_predictions:
      return {}
    return {key: predictions[key] for key in ("panoptic",) + _AP_OUTPUTS}

  def host_update(self, batch, gathered, writer=None):
    if self.instance_ap is not None:
      self.instance_ap.update_state(batch["panoptic"], gathered["panoptic"],
                                    *(gathered[key] for key in _AP_OUTPUTS))
    if writer is not None:
      for i, panoptic in enumerate(gathered["panoptic"]):
        # Image ids are strings, kept on the host; without them, the running index.
        image_id = batch["image_id"][i] if "image_id" in batch else batch["index"][i]
        image_id = image_id.decode() if isinstance(image_id, bytes) else image_id.item()
        if "height" in batch and "width" in batch:
          panoptic = panoptic[:batch["height"][i], :batch["width"][i]]
        writer.write(image_id, panoptic)

  def reset(self):
    self.panoptic_quality.reset_state()
    self.mean_iou.reset_state()
    if self.instance_ap is not None:
      self.instance_ap.reset_state()

  def results(self):
    """Python floats `pq, sq, rq, pq_th, sq_th, rq_th, pq_st, sq_st, rq_st, miou` (plus
    `ap, ap50, ap75, ap_small, ap_medium, ap_large` with `compute_ap`) and NumPy arrays
    `per_class_pq, per_class_sq, per_class_rq, per_class_iou`."""
    panoptic = self.panoptic_quality.result()
    semantic = self.mean_iou.result()
    results = {key: float(panoptic[key]) for key in
               ("pq", "sq", "rq", "pq_th", "sq_th", "rq_th", "pq_st", "sq_st", "rq_st")}
    results["miou"] = float(semantic["miou"])
    for key in ("per_class_pq", "per_class_sq", "per_class_rq"):
      results[key] = np.asarray(panoptic[key])
    results["per_class_iou"] = np.asarray(semantic["per_class_iou"])
    if self.instance_ap is not None:
      results.update(self.instance_ap.result())
    return results


class PanopticServingModule(serving.ServingModule):
  """The serving signatures of a Panoptic-DeepLab model (see `export.saved_model`).

  Args:
    model: a `tf_keras.Model` on float32 images `[b, h, w, 3]` in [0, 255] returning a
      dict with `semantic_logits`, `center_heatmap` and `center_offset` at input
      resolution (e.g. `deeplab_axial.models.panoptic_deeplab(...)`).
    options: a `ServingOptions`.
  """

  TASK = "panoptic_deeplab"

  def __init__(self, model, options, name="panoptic_serving"):
    super().__init__(model, options, name=name)

  def _infer(self, images):
    """Model, softmax and post-processing on `[b, h, w, 3]`; maps are `[b, h, w]`."""
    predictions = self._model_outputs(images, REQUIRED_MODEL_OUTPUTS)
    probs = tf.nn.softmax(tf.cast(predictions["semantic_logits"], tf.float32), axis=-1)
    heatmap = tf.cast(predictions["center_heatmap"], tf.float32)
    offset = tf.cast(predictions["center_offset"], tf.float32)
    # Probabilities in, as in the evaluator, so the numbers match it bit for bit.
    result = self._options.post_processing(probs, heatmap, offset)
    outputs = {key: result[key] for key in ("panoptic", "semantic", "instance",
                                            "instance_panoptic_ids", "instance_scores")}
    outputs["center_heatmap"] = heatmap[..., 0]
    if self._options.include_semantic_probs:
      outputs["semantic_probs"] = probs
    return outputs

  def _void_values(self):
    options = self._options.post_processing
    return {"panoptic": options.ignore_label * options.label_divisor,
            "semantic": options.ignore_label, "instance": 0, "center_heatmap": 0.0,
            "semantic_probs": 0.0}


__all__ = ["PanopticEvaluator", "PanopticServingModule", "PanopticTask"]
