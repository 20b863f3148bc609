"""Streaming panoptic quality (PQ, SQ, RQ) following the official COCO/Cityscapes rules.

The per-image rules are those of `cocodataset/panopticapi` and cityscapesscripts'
`evalPanopticSemanticLabeling.py` (Kirillov et al., "Panoptic Segmentation"):

* Every unique id of a map is one segment; all pixels of a stuff class form one segment
  (their instance ids are ignored). Pixels whose semantic id is `ignore_label` are void and
  belong to no segment.
* A ground-truth pixel of a thing class with instance id 0 is a crowd region ("iscrowd").
  Crowd segments are never matched and never false negatives.
* A ground-truth and a predicted segment of the same class match when
  IoU = |g ∩ p| / (|g| + |p| − |g ∩ p| − |p ∩ void|) > 0.5; each match is a true positive
  contributing its IoU.
* Unmatched non-crowd ground-truth segments are false negatives. An unmatched predicted
  segment is a false positive unless (|p ∩ void| + |p ∩ crowd of its class|) / |p| > 0.5.
* Per class PQ = ΣIoU / (TP + FP/2 + FN/2), SQ = ΣIoU / TP, RQ = TP / (TP + FP/2 + FN/2);
  the overall, thing and stuff figures average the classes with TP + FP + FN > 0 (0 when no
  class of the group qualifies).

A predicted thing pixel with instance id 0 is an ordinary segment (predictions have no crowd).
"""
import numpy as np
import tensorflow as tf
import tf_keras

from deeplab_axial.metrics import _checks

_INT32_MAX = np.iinfo(np.int32).max
# Up to this many (ground-truth, predicted) segment combinations per batch, pair areas are
# counted in a dense table; beyond it, by hashing the pairs present.
_DENSE_PAIR_LIMIT = 1 << 22
# Bound on ids per image (semantic range x label_divisor): the id table holds one int32
# count per possible id and image.
_MAX_IDS_PER_IMAGE = 1 << 24


def _dense_pairs(gt_pixel, pred_pixel, num_gt, num_pred):
  """(gt index, pred index, pixel count) of the pairs present, via a dense count table."""
  size = num_gt * num_pred
  counts = tf.math.bincount(gt_pixel * num_pred + pred_pixel, minlength=size, maxlength=size)
  pair = tf.cast(tf.where(counts > 0)[:, 0], tf.int32)
  return pair // num_pred, pair % num_pred, tf.gather(counts, pair)


def _sparse_pairs(gt_pixel, pred_pixel, num_pred):
  """As `_dense_pairs`, hashing the pair keys (for batches with very many segments)."""
  keys = tf.cast(gt_pixel, tf.int64) * tf.cast(num_pred, tf.int64) + tf.cast(pred_pixel,
                                                                             tf.int64)
  pair, _, counts = tf.unique_with_counts(keys, out_idx=tf.int32)
  num_pred = tf.cast(num_pred, tf.int64)
  return tf.cast(pair // num_pred, tf.int32), tf.cast(pair % num_pred, tf.int32), counts


@tf_keras.saving.register_keras_serializable(package="deeplab_axial")
class PanopticQuality(tf_keras.metrics.Metric):
  """Streaming PQ/SQ/RQ over panoptic maps encoded `semantic * label_divisor + instance`.

  State: per-class float64 sums of IoU and counts of TP, FP and FN, each `[num_classes]`,
  summed across replicas under `tf.distribute`, so the result is exactly that of the
  official tools run over the same images (up to float summation order).

  Example:
    pq = PanopticQuality(num_classes=19, ignore_label=255, label_divisor=1000,
                         thing_classes=range(11, 19))
    pq.update_state(gt_panoptic, predicted_panoptic)   # int [batch, height, width]
    pq.result()["pq"]

  Args:
    num_classes: number of semantic classes; valid semantic ids are `[0, num_classes)`.
    ignore_label: semantic id of void pixels (may lie outside `[0, num_classes)`).
    label_divisor: panoptic id = semantic id * label_divisor + instance id.
    thing_classes: semantic ids of the thing classes; the others are stuff.
    offset: multiplier keeping the int64 segment keys of different images apart; must be
      at least the number of internal segment ids, `(max(num_classes - 1, ignore_label) +
      1) * max_instances_per_category`, which is the default.
    max_instances_per_category: instance ids must be smaller than this (default
      `label_divisor`).
    name: metric name.
    dtype: accumulator dtype (float64 keeps IoU sums exact to ~1e-15).
  """

  def __init__(self, num_classes, ignore_label, label_divisor, thing_classes, offset=None,
               max_instances_per_category=None, name="panoptic_quality", dtype=tf.float64):
    super().__init__(name=name, dtype=dtype)
    if int(num_classes) < 1:
      raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if int(label_divisor) < 1:
      raise ValueError(f"label_divisor must be >= 1, got {label_divisor}")
    if int(ignore_label) < 0:
      raise ValueError(f"ignore_label must be >= 0, got {ignore_label}")
    self.num_classes = int(num_classes)
    self.ignore_label = int(ignore_label)
    self.label_divisor = int(label_divisor)
    self.thing_classes = sorted({int(c) for c in thing_classes})
    bad = [c for c in self.thing_classes
           if not 0 <= c < self.num_classes or c == self.ignore_label]
    if bad:
      raise ValueError(f"thing_classes {bad} are not class ids in [0, {self.num_classes}) "
                       f"other than ignore_label {self.ignore_label}")
    if max_instances_per_category is None:
      max_instances_per_category = self.label_divisor
    if not 1 <= int(max_instances_per_category) <= self.label_divisor:
      raise ValueError(f"max_instances_per_category must be in [1, label_divisor="
                       f"{self.label_divisor}], got {max_instances_per_category}")
    self.max_instances_per_category = int(max_instances_per_category)
    self._max_semantic = max(self.num_classes - 1, self.ignore_label)
    min_offset = (self._max_semantic + 1) * self.max_instances_per_category
    if offset is None:
      offset = min_offset
    if int(offset) < min_offset:
      raise ValueError(f"offset must be >= {min_offset} (the number of possible segment "
                       f"ids), got {offset}")
    self.offset = int(offset)
    self._ids_per_image = (self._max_semantic + 1) * self.label_divisor
    if self._ids_per_image > _MAX_IDS_PER_IMAGE:
      raise ValueError(f"(max(num_classes - 1, ignore_label) + 1) * label_divisor = "
                       f"{self._ids_per_image} exceeds {_MAX_IDS_PER_IMAGE}, the supported "
                       "number of panoptic ids")
    is_thing = np.zeros([self._max_semantic + 1], dtype=bool)
    is_thing[self.thing_classes] = True
    self._is_thing = is_thing
    self._class_is_thing = is_thing[:self.num_classes]
    self._class_is_stuff = ~self._class_is_thing & (np.arange(self.num_classes) !=
                                                    self.ignore_label)
    shape = (self.num_classes,)
    self.iou_sum = self.add_weight("iou_sum", shape=shape, initializer="zeros", dtype=dtype)
    self.tp = self.add_weight("tp", shape=shape, initializer="zeros", dtype=dtype)
    self.fp = self.add_weight("fp", shape=shape, initializer="zeros", dtype=dtype)
    self.fn = self.add_weight("fn", shape=shape, initializer="zeros", dtype=dtype)

  def _segments(self, panoptic, name):
    """Finds the segments of a batch and each pixel's segment.

    Pixel ids are counted in a table of all encodable ids per image (`bincount`), so only
    the few ids present are decoded, validated and canonicalised (stuff instance ids
    dropped, void merged); a lookup table then maps pixels to segment indices.

    Args:
      panoptic: integer `[batch, height, width]` panoptic ids.
      name: argument name for error messages.

    Returns:
      pixel_segment: int32 `[batch * height * width]`, index of each pixel's segment.
      segment_ids: int64 `[num_segments]` canonical ids `semantic * max_instances +
        instance`; segments of different images are distinct even with equal ids.
      checks: control dependencies of the value checks.
    """
    batch = tf.shape(panoptic)[0]
    flat = tf.reshape(panoptic, [batch, -1])
    description = (f"panoptic ids >= 0 whose semantic id (id // {self.label_divisor}) is in "
                   f"[0, {self.num_classes}) or equal to ignore_label {self.ignore_label}")
    checks = _checks.check_bounds(flat, self._ids_per_image, name, description)
    checks.append(tf.debugging.assert_less_equal(
        tf.cast(batch, tf.int64), tf.constant(_INT32_MAX // self._ids_per_image, tf.int64),
        message=f"{name}: batch too large for an int32 id table"))
    with tf.control_dependencies(checks):
      image_start = tf.range(batch)[:, tf.newaxis] * self._ids_per_image
      pixel_key = tf.reshape(tf.cast(flat, tf.int32) + image_start, [-1])
    table_size = batch * self._ids_per_image
    present_key = tf.cast(tf.where(tf.math.bincount(
        pixel_key, minlength=table_size, maxlength=table_size) > 0)[:, 0], tf.int32)
    image = present_key // self._ids_per_image
    present_id = present_key % self._ids_per_image
    semantic = present_id // self.label_divisor
    instance = present_id % self.label_divisor
    is_void = tf.equal(semantic, self.ignore_label)
    checks = _checks.check_in_range(
        present_id, (semantic >= self.num_classes) & ~is_void, name, description)
    checks += _checks.check_in_range(
        present_id, instance >= self.max_instances_per_category, name,
        f"instance ids (id % {self.label_divisor}) below max_instances_per_category "
        f"{self.max_instances_per_category}")
    with tf.control_dependencies(checks):
      instance = tf.where(tf.gather(self._is_thing, semantic), instance,
                          tf.zeros_like(instance))
    canonical = tf.where(is_void, self.ignore_label * self.max_instances_per_category,
                         semantic * self.max_instances_per_category + instance)
    segment_keys, segment_of_present = tf.unique(
        tf.cast(image, tf.int64) * self.offset + tf.cast(canonical, tf.int64))
    table = tf.scatter_nd(present_key[:, tf.newaxis], segment_of_present, [table_size])
    return tf.gather(table, pixel_key), segment_keys % self.offset, checks

  def update_state(self, y_true, y_pred, sample_weight=None):
    """Accumulates the statistics of a batch.

    Args:
      y_true: ground-truth panoptic ids, integer `[batch, height, width]` or `[height, width]`.
      y_pred: predicted panoptic ids, same shape.
      sample_weight: unsupported; must be None.

    Raises:
      ValueError: for non-integer inputs, mismatched shapes or ids outside the label space.
    """
    if sample_weight is not None:
      raise ValueError("PanopticQuality does not support sample_weight, got a value")
    y_true, y_pred = _checks.label_maps(y_true, y_pred)
    gt_pixel, gt_ids, gt_checks = self._segments(y_true, "y_true")
    pred_pixel, pred_ids, pred_checks = self._segments(y_pred, "y_pred")
    with tf.control_dependencies(gt_checks + pred_checks):
      stats = self._batch_statistics(gt_pixel, gt_ids, pred_pixel, pred_ids)
    for variable, value in zip((self.iou_sum, self.tp, self.fp, self.fn), stats):
      variable.assign_add(value)

  def _batch_statistics(self, gt_pixel, gt_ids, pred_pixel, pred_ids):
    """Per-class (IoU sum, TP, FP, FN) of a batch, from the outputs of `_segments`."""
    num_gt = tf.size(gt_ids)
    num_pred = tf.size(pred_ids)
    gt_index, pred_index, pair_pixels = tf.cond(
        tf.cast(num_gt, tf.int64) * tf.cast(num_pred, tf.int64) <= _DENSE_PAIR_LIMIT,
        lambda: _dense_pairs(gt_pixel, pred_pixel, num_gt, num_pred),
        lambda: _sparse_pairs(gt_pixel, pred_pixel, num_pred))
    intersection = tf.cast(pair_pixels, self.dtype)

    def per_gt(values):
      return tf.math.unsorted_segment_sum(values, gt_index, num_gt)

    def per_pred(values):
      return tf.math.unsorted_segment_sum(values, pred_index, num_pred)

    # Kinds of the unique segments (suffix _segments) and of each pair's members.
    gt_class_segments, gt_void_segments, gt_crowd_segments = self._segment_kinds(gt_ids)
    pred_class_segments, pred_void_segments, _ = self._segment_kinds(pred_ids)
    gt_class = tf.gather(gt_class_segments, gt_index)
    gt_void = tf.gather(gt_void_segments, gt_index)
    gt_crowd = tf.gather(gt_crowd_segments, gt_index)
    pred_class = tf.gather(pred_class_segments, pred_index)
    pred_void = tf.gather(pred_void_segments, pred_index)

    zeros = tf.zeros_like(intersection)
    gt_area = per_gt(intersection)
    pred_area = per_pred(intersection)
    pred_void_area = per_pred(tf.where(gt_void, intersection, zeros))
    union = (tf.gather(gt_area, gt_index) + tf.gather(pred_area, pred_index) - intersection -
             tf.gather(pred_void_area, pred_index))
    iou = tf.math.divide_no_nan(intersection, union)
    same_class = tf.equal(gt_class, pred_class)
    match = tf.cast(~gt_void & ~pred_void & ~gt_crowd & same_class & (iou > 0.5), self.dtype)
    pred_crowd_area = per_pred(tf.where(gt_crowd & same_class, intersection, zeros))

    false_negative = ~gt_void_segments & ~gt_crowd_segments & ~(per_gt(match) > 0)
    ignored_fraction = tf.math.divide_no_nan(pred_void_area + pred_crowd_area, pred_area)
    false_positive = ~pred_void_segments & ~(per_pred(match) > 0) & ~(ignored_fraction > 0.5)

    def per_class(values, classes):
      return tf.math.unsorted_segment_sum(values, classes, self.num_classes)

    return (per_class(iou * match, gt_class), per_class(match, gt_class),
            per_class(tf.cast(false_positive, self.dtype), pred_class_segments),
            per_class(tf.cast(false_negative, self.dtype), gt_class_segments))

  def _segment_kinds(self, segment):
    """(class index usable for per-class sums, is void, is crowd) of canonical segment ids.

    Void segments get class index 0; callers mask them out.
    """
    semantic = segment // self.max_instances_per_category
    instance = segment % self.max_instances_per_category
    is_void = tf.equal(semantic, self.ignore_label)
    is_crowd = tf.gather(self._is_thing, semantic) & tf.equal(instance, 0)
    return tf.where(is_void, tf.zeros_like(semantic), semantic), is_void, is_crowd

  def result(self):
    """Returns a dict of float64 tensors.

    Scalars `pq, sq, rq, pq_th, sq_th, rq_th, pq_st, sq_st, rq_st` (fractions in [0, 1]) and
    `num_classes_evaluated`, `_th`, `_st` (classes with TP + FP + FN > 0); per-class arrays
    `[num_classes]` `per_class_pq/sq/rq` (0 for classes never seen) and the raw
    `per_class_iou_sum/tp/fp/fn`.
    """
    tp, fp, fn, iou_sum = (tf.convert_to_tensor(v)
                           for v in (self.tp, self.fp, self.fn, self.iou_sum))
    denominator = tp + 0.5 * fp + 0.5 * fn
    per_class = {
        "pq": tf.math.divide_no_nan(iou_sum, denominator),
        "sq": tf.math.divide_no_nan(iou_sum, tp),
        "rq": tf.math.divide_no_nan(tp, denominator),
    }
    seen = (tp + fp + fn) > 0
    results = {}
    for suffix, group in (("", self._class_is_thing | self._class_is_stuff),
                          ("_th", self._class_is_thing), ("_st", self._class_is_stuff)):
      evaluated = tf.cast(seen & group, self.dtype)
      count = tf.reduce_sum(evaluated)
      for key, values in per_class.items():
        results[key + suffix] = tf.math.divide_no_nan(tf.reduce_sum(values * evaluated), count)
      results["num_classes_evaluated" + suffix] = count
    for key, values in per_class.items():
      results["per_class_" + key] = values
    results.update(per_class_iou_sum=iou_sum, per_class_tp=tp, per_class_fp=fp,
                   per_class_fn=fn)
    return results

  def reset_state(self):
    # The base class assigns scalar zeros, which non-scalar variables reject.
    for variable in self.variables:
      variable.assign(tf.zeros_like(variable))

  def get_config(self):
    config = super().get_config()
    config.update(num_classes=self.num_classes, ignore_label=self.ignore_label,
                  label_divisor=self.label_divisor, thing_classes=self.thing_classes,
                  offset=self.offset,
                  max_instances_per_category=self.max_instances_per_category)
    return config
