"""COCO-style instance mask AP computed with pycocotools (a Python-side metric).

Unlike `PanopticQuality` and `MeanIoU` this metric is not a TF graph metric: `update_state`
takes NumPy arrays (or eager tensors) on the host, run-length encodes the masks and keeps
them in Python lists; `result()` runs `pycocotools.cocoeval.COCOeval(iouType="segm")`.
Under `tf.distribute`, gather the per-replica outputs on the host (e.g.
`strategy.experimental_local_results`) before updating it.

Ground truth comes from a panoptic map: every thing segment with instance id > 0 is an
instance; a thing-class region with instance id 0 is a crowd region (`iscrowd=1`), which
COCOeval ignores and against which detections are not penalised. Areas are pixel counts.
"""
import contextlib
import io

import numpy as np
from pycocotools import coco
from pycocotools import cocoeval
from pycocotools import mask as mask_utils

_SUMMARY_KEYS = ("ap", "ap50", "ap75", "ap_small", "ap_medium", "ap_large")


def _encode(mask):
  """RLE of a boolean mask `[height, width]` with a JSON-safe `counts` string."""
  rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
  rle["counts"] = rle["counts"].decode("ascii")
  return rle


class InstanceAP:
  """Accumulates instance masks and reports COCO mask AP (fractions in [0, 1]).

  Args:
    num_classes: number of semantic classes.
    ignore_label: semantic id of void pixels.
    label_divisor: panoptic id = semantic id * label_divisor + instance id.
    thing_classes: semantic ids of the classes evaluated (COCO category ids = these ids).
    max_detections: detections kept per image (COCO's largest `maxDets`, default 100).
  """

  def __init__(self, num_classes, ignore_label, label_divisor, thing_classes,
               max_detections=100):
    self.num_classes = int(num_classes)
    self.ignore_label = int(ignore_label)
    self.label_divisor = int(label_divisor)
    self.thing_classes = sorted({int(c) for c in thing_classes})
    bad = [c for c in self.thing_classes if not 0 <= c < self.num_classes]
    if bad:
      raise ValueError(f"thing_classes {bad} are outside [0, {self.num_classes})")
    if int(max_detections) < 1:
      raise ValueError(f"max_detections must be >= 1, got {max_detections}")
    self.max_detections = int(max_detections)
    self.reset_state()

  def reset_state(self):
    self._images = []
    self._ground_truth = []
    self._detections = []

  def _panoptic(self, value, name):
    """Validates one panoptic map and returns it as int64 `[height, width]`."""
    array = np.asarray(value)
    if not np.issubdtype(array.dtype, np.integer):
      raise ValueError(f"{name} must be an integer panoptic map, got dtype {array.dtype}")
    if array.ndim != 2:
      raise ValueError(f"{name} must have shape [height, width] per image, got {array.shape}")
    array = array.astype(np.int64)
    semantic = array // self.label_divisor
    bad = (array < 0) | ((semantic >= self.num_classes) & (semantic != self.ignore_label))
    if bad.any():
      raise ValueError(f"{name} contains {np.unique(array[bad])[:10].tolist()}; expected "
                       f"panoptic ids whose semantic id is in [0, {self.num_classes}) or "
                       f"{self.ignore_label}")
    return array

  def _add_ground_truth(self, image_id, panoptic):
    for segment_id in np.unique(panoptic):
      category = int(segment_id // self.label_divisor)
      if category not in self.thing_classes:
        continue
      mask = panoptic == segment_id
      rle = _encode(mask)
      self._ground_truth.append({
          "id": len(self._ground_truth) + 1, "image_id": image_id, "category_id": category,
          "segmentation": rle, "area": float(mask.sum()),
          "bbox": mask_utils.toBbox(rle).tolist(),
          "iscrowd": int(segment_id % self.label_divisor == 0)})

  def _add_image(self, y_true):
    panoptic = self._panoptic(y_true, "y_true")
    image_id = len(self._images) + 1
    height, width = panoptic.shape
    self._images.append({"id": image_id, "height": height, "width": width})
    self._add_ground_truth(image_id, panoptic)
    return image_id, panoptic.shape

  def update_state(self, y_true, y_pred, segment_ids, segment_scores):
    """Adds a batch of predicted panoptic maps with scored instance segments.

    This is the output of `deeplab_axial.ops.panoptic_inference` (`panoptic`,
    `instance_panoptic_ids`, `instance_scores`).

    Args:
      y_true: ground-truth panoptic ids, integer `[batch, height, width]`.
      y_pred: predicted panoptic ids, integer `[batch, height, width]`.
      segment_ids: integer `[batch, K]`, panoptic ids of the scored instances (negative for
        empty slots). Each thing segment of `y_pred` listed here is one detection; ids absent
        from `y_pred` (empty masks) are skipped.
      segment_scores: float `[batch, K]`, the confidence of each listed segment.
    """
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    segment_ids, segment_scores = np.asarray(segment_ids), np.asarray(segment_scores)
    if y_true.shape != y_pred.shape or y_true.ndim != 3:
      raise ValueError(f"y_true {y_true.shape} and y_pred {y_pred.shape} must have the same "
                       "shape [batch, height, width]")
    if segment_ids.shape != segment_scores.shape or segment_ids.shape[:1] != y_true.shape[:1]:
      raise ValueError(f"segment_ids {segment_ids.shape} and segment_scores "
                       f"{segment_scores.shape} must both be [batch={len(y_true)}, K]")
    for truth, prediction, ids, scores in zip(y_true, y_pred, segment_ids, segment_scores):
      prediction = self._panoptic(prediction, "y_pred")
      masks, classes, kept_scores = [], [], []
      for segment_id, score in zip(ids.reshape(-1).tolist(), scores.reshape(-1).tolist()):
        category = int(segment_id) // self.label_divisor
        mask = prediction == segment_id
        if segment_id >= 0 and category in self.thing_classes and mask.any():
          masks.append(mask)
          classes.append(category)
          kept_scores.append(score)
      self.update_from_instances(
          truth, np.asarray(masks, dtype=bool).reshape((-1,) + prediction.shape), classes,
          kept_scores)

  def update_from_instances(self, y_true, masks, classes, scores):
    """Adds one image from explicit instance masks.

    Args:
      y_true: ground-truth panoptic ids, integer `[height, width]`.
      masks: boolean `[num_instances, height, width]`.
      classes: int `[num_instances]` semantic ids (must be thing classes).
      scores: float `[num_instances]` confidences.
    """
    image_id, shape = self._add_image(y_true)
    masks = np.asarray(masks, dtype=bool)
    classes = np.asarray(classes, dtype=np.int64).reshape(-1)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if masks.ndim != 3 or masks.shape[1:] != shape:
      raise ValueError(f"masks must have shape [num_instances, {shape[0]}, {shape[1]}], got "
                       f"{masks.shape}")
    if not len(masks) == len(classes) == len(scores):
      raise ValueError(f"masks ({len(masks)}), classes ({len(classes)}) and scores "
                       f"({len(scores)}) must have the same length")
    bad = sorted(set(classes.tolist()) - set(self.thing_classes))
    if bad:
      raise ValueError(f"classes contains {bad}; expected thing classes {self.thing_classes}")
    for mask, category, score in zip(masks, classes, scores):
      rle = _encode(mask)
      self._detections.append({"image_id": image_id, "category_id": int(category),
                               "segmentation": rle, "score": float(score),
                               "area": float(mask.sum()),
                               "bbox": mask_utils.toBbox(rle).tolist()})

  def result(self):
    """Returns `ap, ap50, ap75, ap_small, ap_medium, ap_large` (floats in [0, 1]).

    Values COCOeval reports as -1 (nothing to evaluate, e.g. no ground truth of that
    area) are returned as -1; with no detections at all every value is 0.
    """
    if not self._detections:
      return dict.fromkeys(_SUMMARY_KEYS, 0.0)
    with contextlib.redirect_stdout(io.StringIO()):
      ground_truth = coco.COCO()
      ground_truth.dataset = {
          "images": self._images, "annotations": self._ground_truth,
          "categories": [{"id": c, "name": str(c)} for c in self.thing_classes]}
      ground_truth.createIndex()
      detections = ground_truth.loadRes([dict(d) for d in self._detections])
      evaluator = cocoeval.COCOeval(ground_truth, detections, iouType="segm")
      evaluator.params.maxDets = [1, 10, self.max_detections]
      evaluator.evaluate()
      evaluator.accumulate()
      evaluator.summarize()
    return {key: float(value) for key, value in zip(_SUMMARY_KEYS, evaluator.stats)}
