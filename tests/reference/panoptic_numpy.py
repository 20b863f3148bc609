"""Plain NumPy references for the panoptic ops, written from papers.md §5.2 and §5.4.

Deliberately naive (Python loops over instances, classes and centres) so that they are
easy to check by eye. Shared by tests/ops and benchmarks/post_processing.py; the package
never imports this file.
"""
import numpy as np


def panoptic_targets_reference(panoptic, *, label_divisor, ignore_label, thing_class_ids,
                               sigma=8.0, small_instance_area=4096,
                               small_instance_weight=3.0, ignore_crowd_in_semantic=False):
  """Targets of one [h, w] panoptic map (see generate_panoptic_targets), NumPy arrays."""
  panoptic = np.asarray(panoptic, np.int64)
  height, width = panoptic.shape
  semantic = panoptic // label_divisor
  instance = panoptic % label_divisor
  void = semantic == ignore_label
  thing = np.isin(semantic, thing_class_ids) & ~void
  crowd = thing & (instance == 0)

  semantic_target = semantic.copy()
  semantic_weights = np.ones((height, width), np.float32)
  heatmap = np.zeros((height, width), np.float32)
  offset = np.zeros((height, width, 2), np.float32)
  offset_weights = np.zeros((height, width), np.float32)
  radius = int(3 * sigma + 1)
  for label in np.unique(panoptic[thing & (instance != 0)]):
    ys, xs = np.nonzero(panoptic == label)
    center_y, center_x = int(np.round(ys.mean())), int(np.round(xs.mean()))
    for y in range(max(0, center_y - radius), min(height, center_y + radius + 1)):
      for x in range(max(0, center_x - radius), min(width, center_x + radius + 1)):
        value = np.exp(-((y - center_y)**2 + (x - center_x)**2) / (2 * sigma**2))
        heatmap[y, x] = max(heatmap[y, x], value)
    offset[ys, xs, 0] = center_y - ys
    offset[ys, xs, 1] = center_x - xs
    offset_weights[ys, xs] = 1
    if len(ys) < small_instance_area:
      semantic_weights[ys, xs] = small_instance_weight
  ignored = void | crowd if ignore_crowd_in_semantic else void
  semantic_target[ignored] = ignore_label
  semantic_weights[ignored] = 0
  return {
      "semantic": semantic_target.astype(np.int32),
      "semantic_weights": semantic_weights,
      "center_heatmap": heatmap[..., None],
      "center_weights": (~(void | crowd)).astype(np.float32),
      "center_offset": offset,
      "offset_weights": offset_weights,
  }


def softmax(logits):
  shifted = logits - logits.max(axis=-1, keepdims=True)
  exp = np.exp(shifted.astype(np.float64))
  return exp / exp.sum(axis=-1, keepdims=True)


def find_centers(heatmap, threshold, nms_kernel, top_k):
  """Centre NMS of one [h, w] heatmap: [(y, x, score)] in descending score order.

  A centre is a pixel above `threshold` equal to the maximum of its nms_kernel² window
  (plateaus keep every pixel); ties in score keep raster order; at most top_k survive.
  """
  height, width = heatmap.shape
  half = nms_kernel // 2
  padded = np.full((height + 2 * half, width + 2 * half), -np.inf, np.float32)
  padded[half:half + height, half:half + width] = heatmap
  windows = np.lib.stride_tricks.sliding_window_view(padded, (nms_kernel, nms_kernel))
  pooled = windows.max(axis=(-2, -1))
  candidates = [(-heatmap[y, x], y * width + x)
                for y, x in zip(*np.nonzero((heatmap > threshold) & (heatmap == pooled)))]
  candidates.sort()
  return [(index // width, index % width, -neg_score)
          for neg_score, index in candidates[:top_k]]


def nearest_center(heatmap_shape, offset, centers, rows_per_chunk=64):
  """Index of the nearest centre to pixel + offset for every pixel of [h, w] (-1: none)."""
  height, width = heatmap_shape
  nearest = np.full((height, width), -1, np.int64)
  if not centers:
    return nearest
  center_y = np.array([c[0] for c in centers], np.float32)
  center_x = np.array([c[1] for c in centers], np.float32)
  for start in range(0, height, rows_per_chunk):
    stop = min(height, start + rows_per_chunk)
    ys, xs = np.meshgrid(np.arange(start, stop, dtype=np.float32),
                         np.arange(width, dtype=np.float32), indexing="ij")
    target_y = ys + offset[start:stop, :, 0]
    target_x = xs + offset[start:stop, :, 1]
    dy = target_y[..., None] - center_y
    dx = target_x[..., None] - center_x
    nearest[start:stop] = np.argmin(dy * dy + dx * dx, axis=-1)  # ties: first centre
  return nearest


def panoptic_inference_reference(semantic_logits, center_heatmap, center_offset, *,
                                 thing_class_ids, label_divisor, ignore_label=255,
                                 center_threshold=0.1, nms_kernel=7, top_k=200,
                                 stuff_area=2048, thing_area=0,
                                 semantic_is_probabilities=False):
  """Panoptic-DeepLab post-processing of one image (papers.md §5.4).

  Args:
    semantic_logits: float32 [h, w, classes] (or probabilities).
    center_heatmap: float32 [h, w] or [h, w, 1].
    center_offset: float32 [h, w, 2], (dy, dx).

  Returns:
    (panoptic, semantic, instance) int32 [h, w] and {panoptic id: score} of the kept
    instances.
  """
  semantic_logits = np.asarray(semantic_logits, np.float32)
  heatmap = np.asarray(center_heatmap, np.float32).reshape(semantic_logits.shape[:2])
  offset = np.asarray(center_offset, np.float32)
  probs = semantic_logits if semantic_is_probabilities else softmax(semantic_logits)
  semantic = np.argmax(semantic_logits, axis=-1)
  void = ignore_label * label_divisor
  thing_pixels = np.isin(semantic, thing_class_ids)

  centers = find_centers(heatmap, center_threshold, nms_kernel, top_k)
  nearest = nearest_center(heatmap.shape, offset, centers)
  panoptic = np.full(semantic.shape, void, np.int64)
  instance = np.zeros(semantic.shape, np.int64)
  scores = {}
  next_id = {}
  for index, (center_y, center_x, center_score) in enumerate(centers):
    mask = thing_pixels & (nearest == index)
    if mask.sum() == 0 or mask.sum() < thing_area:
      continue
    votes = np.bincount(semantic[mask])
    label = int(np.argmax(votes))  # ties: smallest class id
    next_id[label] = next_id.get(label, 0) + 1
    panoptic_id = label * label_divisor + next_id[label]
    panoptic[mask] = panoptic_id
    instance[mask] = next_id[label]
    scores[panoptic_id] = center_score * probs[mask][:, label].mean()
  for label in np.unique(semantic[~thing_pixels]):
    region = (semantic == label) & ~thing_pixels
    if label != ignore_label and region.sum() >= stuff_area:
      panoptic[region] = label * label_divisor
  return (panoptic.astype(np.int32), semantic.astype(np.int32), instance.astype(np.int32),
          scores)
