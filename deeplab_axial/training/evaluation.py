"""Evaluation: test-time augmentation, the distributed eval loop and its metrics.

A model callable maps images float32 `[batch, height, width, 3]` in [0, 255] to a dict with
`semantic_logits [batch, h, w, classes]`, `center_heatmap [batch, h, w, 1]` and
`center_offset [batch, h, w, 2]` ((dy, dx) in pixels of its input).
"""
import functools

import numpy as np
import tensorflow as tf

from deeplab_axial import metrics as metrics_lib
from deeplab_axial import ops
from deeplab_axial.data import pipeline

_OUTPUT_KEYS = ("semantic_logits", "center_heatmap", "center_offset")


def _scaled_size(height, width, scale):
  """Rounded `[height * scale, width * scale]` as int32, at least 1 pixel each."""
  size = tf.cast(tf.stack([height, width]), tf.float32) * scale
  return tf.maximum(tf.cast(tf.round(size), tf.int32), 1)


def _model_outputs(model_fn, images):
  outputs = model_fn(images)
  missing = [key for key in _OUTPUT_KEYS if key not in outputs]
  if missing:
    raise ValueError(f"model_fn outputs lack {missing}; got keys {sorted(outputs)}")
  return [tf.cast(outputs[key], tf.float32) for key in _OUTPUT_KEYS]


def predict_with_tta(model_fn, images, scales=(1.0,), flip=False):
  """Runs `model_fn` over rescaled (and mirrored) copies and averages at input resolution.

  For each scale the images are bilinearly resized to `round(size * scale)`; the model's
  logits, heatmap and offsets are resized back to the input size, the offsets multiplied by
  `input size / scaled size` per axis, and the logits turned into softmax probabilities.
  Mirrored copies are flipped back and their dx negated. Probabilities, heatmaps and
  offsets are then averaged over all `len(scales) * (2 if flip else 1)` copies.

  Args:
    model_fn: callable, images -> dict (see the module docstring).
    images: float `[batch, height, width, 3]` in [0, 255]; height/width may be dynamic.
    scales: positive scale factors.
    flip: whether to add horizontally mirrored copies.

  Returns:
    Dict of float32 tensors at input resolution: `semantic_probs [b, h, w, classes]`,
    `center_heatmap [b, h, w, 1]`, `center_offset [b, h, w, 2]`.

  Raises:
    ValueError: for empty or non-positive `scales`, or images not `[b, h, w, 3]`.
  """
  scales = tuple(float(s) for s in scales)
  if not scales or min(scales) <= 0:
    raise ValueError(f"scales must be a non-empty sequence of positive numbers, got {scales}")
  images = tf.cast(tf.convert_to_tensor(images), tf.float32)
  if images.shape.rank != 4 or images.shape[-1] != 3:
    raise ValueError(f"images must have shape [batch, height, width, 3], got {images.shape}")
  height, width = tf.shape(images)[1], tf.shape(images)[2]
  input_size = tf.stack([height, width])
  totals = None
  for scale in scales:
    scaled_size = input_size if scale == 1.0 else _scaled_size(height, width, scale)
    scaled = images if scale == 1.0 else tf.image.resize(images, scaled_size)
    # Offsets are in pixels of the scaled input; convert them to input pixels.
    offset_scale = tf.cast(input_size, tf.float32) / tf.cast(scaled_size, tf.float32)
    for mirrored in ((False, True) if flip else (False,)):
      logits, heatmap, offset = _model_outputs(
          model_fn, tf.reverse(scaled, axis=[2]) if mirrored else scaled)
      if mirrored:
        logits, heatmap, offset = (tf.reverse(t, axis=[2]) for t in (logits, heatmap, offset))
        offset *= tf.constant([1.0, -1.0])
      if scale != 1.0:
        logits, heatmap, offset = (tf.image.resize(t, input_size)
                                   for t in (logits, heatmap, offset))
        offset *= offset_scale
      copy = (tf.nn.softmax(logits, axis=-1), heatmap, offset)
      totals = copy if totals is None else tuple(a + b for a, b in zip(totals, copy))
  count = float(len(scales) * (2 if flip else 1))
  return {"semantic_probs": totals[0] / count, "center_heatmap": totals[1] / count,
          "center_offset": totals[2] / count}


def default_post_processor(thing_classes, label_divisor, ignore_label, **kwargs):
  """`deeplab_axial.ops.panoptic_inference` bound to a dataset, taking probabilities.

  Args:
    thing_classes: semantic ids of the thing classes.
    label_divisor: panoptic label divisor.
    ignore_label: void semantic id.
    **kwargs: further `panoptic_inference` options (center_threshold, nms_kernel, top_k,
      stuff_area, ...).

  Returns:
    Callable `(semantic_probs, center_heatmap, center_offset) -> dict` for `Evaluator`.
  """
  from deeplab_axial import ops  # pylint: disable=import-outside-toplevel
  return functools.partial(ops.panoptic_inference, thing_class_ids=list(thing_classes),
                           label_divisor=label_divisor, ignore_label=ignore_label,
                           semantic_is_probabilities=True, **kwargs)


class Evaluator:
  """Evaluates a model over a dataset of `{"image", "panoptic"}` batches.

  Per batch (inside `strategy.run`, one `tf.function`): `predict_with_tta`, then
  `post_process_fn(semantic_probs, center_heatmap, center_offset)` → dict with int32
  `panoptic` and `semantic` `[b, h, w]`, then the streaming `PanopticQuality` and `MeanIoU`
  updates (variables created under `strategy.scope()`, summed across replicas). Instance AP
  (`compute_ap=True`, needs `instance_panoptic_ids` and `instance_scores` from the
  post-processor) and prediction writing run on the host with each replica's outputs.

  Args:
    model_fn: callable, images -> dict of head outputs (e.g. a `tf_keras.Model` built under
      `strategy.scope()`).
    post_process_fn: callable as above, e.g. `default_post_processor(...)`.
    num_classes, ignore_label, label_divisor, thing_classes: the dataset's label space.
    strategy: a `tf.distribute.Strategy` (default: the current one).
    scales, flip: test-time augmentation, see `predict_with_tta`.
    compute_ap: also report COCO mask AP (`ap`, `ap50`, `ap75`, ...).
    prediction_writer: optional object with `write(image_id, panoptic)` (e.g.
      `deeplab_axial.data.prediction_writers.CityscapesPanopticWriter`); image ids come
      from the batch's `image_id` feature when present, else a running index. Padded
      predictions are cropped to the batch's `height`/`width` when present.
  """

  def __init__(self, model_fn, post_process_fn, *, num_classes, ignore_label, label_divisor,
               thing_classes, strategy=None, scales=(1.0,), flip=False, compute_ap=False,
               prediction_writer=None):
    self.model_fn = model_fn
    self.post_process_fn = post_process_fn
    self.label_divisor = int(label_divisor)
    self.strategy = strategy or tf.distribute.get_strategy()
    self.scales = tuple(scales)
    self.flip = bool(flip)
    with self.strategy.scope():
      self.panoptic_quality = metrics_lib.PanopticQuality(
          num_classes=num_classes, ignore_label=ignore_label, label_divisor=label_divisor,
          thing_classes=thing_classes)
      self.mean_iou = metrics_lib.MeanIoU(num_classes=num_classes, ignore_label=ignore_label)
    self.instance_ap = metrics_lib.InstanceAP(
        num_classes=num_classes, ignore_label=ignore_label, label_divisor=label_divisor,
        thing_classes=thing_classes) if compute_ap else None
    self.prediction_writer = prediction_writer
    self._step = tf.function(self._distributed_step, reduce_retracing=True)

  def _replica_step(self, batch, with_predictions):
    predictions = predict_with_tta(self.model_fn, batch["image"], self.scales, self.flip)
    outputs = self.post_process_fn(predictions["semantic_probs"],
                                   predictions["center_heatmap"],
                                   predictions["center_offset"])
    missing = [k for k in ("panoptic", "semantic") if k not in outputs]
    if self.instance_ap is not None:
      missing += [k for k in ("instance_panoptic_ids", "instance_scores") if k not in outputs]
    if missing:
      raise ValueError(f"post_process_fn outputs lack {missing}; got keys {sorted(outputs)}")
    void = self.panoptic_quality.ignore_label
    # dataset.resize_long_side: metrics and writers see the original image size.
    outputs = dict(outputs,
                   panoptic=pipeline.predictions_to_label_frame(
                       outputs["panoptic"], batch, void * self.label_divisor),
                   semantic=pipeline.predictions_to_label_frame(outputs["semantic"], batch,
                                                                void))
    if "height" in batch and "width" in batch:
      outputs = self._void_outside_images(outputs, batch["height"], batch["width"])
    ground_truth = batch["panoptic"]
    self.panoptic_quality.update_state(ground_truth, outputs["panoptic"])
    self.mean_iou.update_state(ground_truth // self.label_divisor, outputs["semantic"])
    host = {}
    if self.instance_ap is not None:
      host.update(ground_truth=ground_truth, panoptic=outputs["panoptic"],
                  instance_panoptic_ids=outputs["instance_panoptic_ids"],
                  instance_scores=outputs["instance_scores"])
    if with_predictions:
      host["panoptic"] = outputs["panoptic"]
      for key in ("image_id", "height", "width"):
        if key in batch:
          host[key] = batch[key]
    return host

  def _void_outside_images(self, outputs, heights, widths):
    """Predictions on the padding become void, so metrics see only the original images.

    Without this a predicted segment reaching into the (void-labelled) padding would be
    judged by its padded area (PQ's "more than half void" rule), so the numbers could
    differ from those on the unpadded images (e.g. from the exported SavedModel).
    """
    shape = tf.shape(outputs["panoptic"])
    inside = ops.inside_images_mask(heights, widths, shape[1], shape[2])
    void_semantic = self.panoptic_quality.ignore_label
    outputs = dict(outputs)
    outputs["panoptic"] = tf.where(inside, outputs["panoptic"],
                                   void_semantic * self.label_divisor)
    outputs["semantic"] = tf.where(inside, outputs["semantic"], void_semantic)
    return outputs

  def _distributed_step(self, batch, with_predictions):
    # `with_predictions` is a Python bool: one trace with and one without.
    return self.strategy.run(self._replica_step, args=(batch, with_predictions))

  def _host_update(self, host, next_index, prediction_writer):
    """Feeds one replica's outputs to AP and the writer; returns the next running index."""
    host = {k: v.numpy() for k, v in host.items()}
    if self.instance_ap is not None:
      self.instance_ap.update_state(host["ground_truth"], host["panoptic"],
                                    host["instance_panoptic_ids"], host["instance_scores"])
    if prediction_writer is not None:
      for i, panoptic in enumerate(host["panoptic"]):
        if "image_id" in host:
          image_id = host["image_id"][i]
          image_id = image_id.decode() if isinstance(image_id, bytes) else image_id.item()
        else:
          image_id = next_index + i
        if "height" in host and "width" in host:
          panoptic = panoptic[:host["height"][i], :host["width"][i]]
        prediction_writer.write(image_id, panoptic)
      next_index += len(host["panoptic"])
    return next_index

  def evaluate(self, dataset, num_steps=None, prediction_writer=None):
    """Evaluates over `dataset` (global batches; distributed here) and returns metrics.

    Args:
      dataset: `tf.data.Dataset` of dicts with `image` (uint8/float `[b, h, w, 3]`) and
        `panoptic` (int32 `[b, h, w]`), optionally `image_id` `[b]` and the original
        `height`, `width` `[b]` of padded images (predictions outside become void).
      num_steps: stop after this many batches (default: the whole dataset).
      prediction_writer: writer for this evaluation only (default: the constructor's).

    Returns:
      Dict of Python floats `pq, sq, rq, pq_th, sq_th, rq_th, pq_st, sq_st, rq_st, miou`
      (plus `ap, ap50, ap75, ap_small, ap_medium, ap_large` with `compute_ap`) and NumPy
      arrays `per_class_pq, per_class_sq, per_class_rq, per_class_iou`.
    """
    self.panoptic_quality.reset_state()
    self.mean_iou.reset_state()
    if self.instance_ap is not None:
      self.instance_ap.reset_state()
    writer = prediction_writer or self.prediction_writer
    next_index = 0
    for step, batch in enumerate(self.strategy.experimental_distribute_dataset(dataset)):
      if num_steps is not None and step >= num_steps:
        break
      host = self._step(batch, writer is not None)
      if host:
        per_key = {k: self.strategy.experimental_local_results(v) for k, v in host.items()}
        for replica_values in zip(*per_key.values()):
          next_index = self._host_update(dict(zip(per_key, replica_values)), next_index,
                                         writer)
    return self.results()

  def results(self):
    """The metrics accumulated since the last `evaluate` started (see `evaluate`)."""
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
