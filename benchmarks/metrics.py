"""Benchmark: streaming PanopticQuality (tf.function) vs cityscapesscripts' single core.

Synthetic Cityscapes-like pairs of 1024×2048 panoptic maps (19 classes, things 11–18,
label divisor 1000, ~40 instances, crowd and void regions; the prediction is a jittered
copy with class swaps, misses and spurious segments). cityscapesscripts'
`pq_compute_single_core` reads the pairs from PNG + JSON (its normal input, so its time
includes PNG decoding); ours runs `PanopticQuality.update_state` in a `tf.function` on
in-memory int32 tensors, one pair per call. Pairs are generated one at a time (untimed) to
keep memory low. Prints both totals, the ratio cityscapesscripts / ours and the largest
difference between the two PQ results.

  python benchmarks/metrics.py            # 50 pairs
  python benchmarks/metrics.py --quick    # 5 pairs
"""
import argparse
import contextlib
import io
import os
import tempfile
import time

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402
import tensorflow as tf  # noqa: E402

from cityscapesscripts.evaluation import evalPanopticSemanticLabeling as cs_eval  # noqa: E402
from deeplab_axial.data import encoding  # noqa: E402
from deeplab_axial.data import prediction_writers  # noqa: E402
from deeplab_axial.metrics import PanopticQuality  # noqa: E402

NUM_CLASSES = 19
THINGS = tuple(range(11, 19))
IGNORE = 255
DIVISOR = 1000
HEIGHT, WIDTH = 1024, 2048
# Category ids >= 1 so that no stuff segment gets the void id 0 in the Cityscapes format.
CATEGORY_MAP = {c: c + 1 for c in range(NUM_CLASSES)}


def synthetic_pair(seed):
  """(ground truth, prediction) int32 [HEIGHT, WIDTH] panoptic maps."""
  rng = np.random.default_rng(seed)
  gt = np.zeros((HEIGHT, WIDTH), np.int32)
  for column in range(0, WIDTH, 256):  # Stuff bands.
    gt[:, column:column + 256] = int(rng.integers(0, 11)) * DIVISOR
  pred = gt.copy()
  for instance in range(1, 41):
    category = int(rng.choice(THINGS))
    h, w = rng.integers(20, 200, size=2)
    y, x = rng.integers(0, HEIGHT - h), rng.integers(0, WIDTH - w)
    gt[y:y + h, x:x + w] = category * DIVISOR + instance
    if rng.random() < 0.1:
      continue
    dy, dx = rng.integers(-15, 16, size=2)
    predicted = int(rng.choice(THINGS)) if rng.random() < 0.1 else category
    pred[max(y + dy, 0):y + h + dy, max(x + dx, 0):x + w + dx] = predicted * DIVISOR + instance
  gt[100:200, 300:500] = THINGS[0] * DIVISOR  # Crowd.
  gt[-60:, :] = IGNORE * DIVISOR  # Void (ego vehicle).
  pred[-40:, 1000:1100] = IGNORE * DIVISOR
  return gt, pred


def ground_truth_annotation(folder, image_id, panoptic):
  """Writes a Cityscapes-format ground-truth PNG (crowd flagged); returns its annotation."""
  semantic, instance = panoptic // DIVISOR, panoptic % DIVISOR
  category = np.where(semantic == IGNORE, 0, semantic + 1)
  is_instance = np.isin(semantic, THINGS) & (instance > 0)
  segment = np.where(is_instance, category * 1000 + instance, category).astype(np.int64)
  segments_info = []
  for segment_id, area in zip(*np.unique(segment, return_counts=True)):
    if segment_id == 0:
      continue
    category_id = int(segment_id // 1000 if segment_id >= 1000 else segment_id)
    segments_info.append({"id": int(segment_id), "category_id": category_id, "area": int(area),
                          "iscrowd": int(category_id - 1 in THINGS and segment_id < 1000)})
  file_name = f"{image_id}_gtFine_panoptic.png"
  Image.fromarray(encoding.id_to_rgb(segment)).save(os.path.join(folder, file_name))
  return {"image_id": image_id, "file_name": file_name, "segments_info": segments_info}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="5 pairs instead of 50")
  args = parser.parse_args()
  num_pairs = 5 if args.quick else 50

  metric = PanopticQuality(NUM_CLASSES, IGNORE, DIVISOR, THINGS)

  @tf.function
  def update(y_true, y_pred):
    metric.update_state(y_true, y_pred)

  warm_gt, warm_pred = synthetic_pair(-1 % 2**32)
  update(tf.constant(warm_gt), tf.constant(warm_pred))  # Trace once, untimed.
  metric.reset_state()

  categories = {CATEGORY_MAP[c]: {"id": CATEGORY_MAP[c], "name": str(c),
                                  "isthing": int(c in THINGS)} for c in range(NUM_CLASSES)}
  ours_seconds = 0.0
  annotations = []
  with tempfile.TemporaryDirectory() as tmp:
    gt_dir = os.path.join(tmp, "gt")
    os.makedirs(gt_dir)
    writer = prediction_writers.CityscapesPanopticWriter(
        tmp, DIVISOR, IGNORE, THINGS, category_map=CATEGORY_MAP)
    for seed in range(num_pairs):
      gt, pred = synthetic_pair(seed)
      gt_tensor, pred_tensor = tf.constant(gt), tf.constant(pred)
      start = time.perf_counter()
      update(gt_tensor, pred_tensor)
      metric.tp.numpy()  # Waits for the update.
      ours_seconds += time.perf_counter() - start
      image_id = f"bench_{seed:06d}_000019"
      annotations.append((ground_truth_annotation(gt_dir, image_id, gt),
                          writer.write(image_id, pred)))
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
      stat = cs_eval.pq_compute_single_core(0, annotations, gt_dir, writer.png_dir, categories)
    official_seconds = time.perf_counter() - start
  official = cs_eval.average_pq(stat, categories)
  ours = metric.result()
  difference = max(abs(float(ours[key + suffix]) - official[group][key])
                   for suffix, group in (("", "All"), ("_th", "Things"), ("_st", "Stuff"))
                   for key in ("pq", "sq", "rq"))
  print(f"PQ over {num_pairs} pairs of {HEIGHT}x{WIDTH}: PQ {float(ours['pq']):.4f}, "
        f"max |ours - official| over PQ/SQ/RQ (all/th/st) = {difference:.2e}")
  print(f"cityscapesscripts single core (incl. PNG decode): {official_seconds:8.2f} s "
        f"({1000 * official_seconds / num_pairs:.0f} ms/pair)")
  print(f"ours, tf.function, in-memory tensors:            {ours_seconds:8.2f} s "
        f"({1000 * ours_seconds / num_pairs:.0f} ms/pair)")
  print(f"ratio cityscapesscripts / ours: {official_seconds / ours_seconds:.2f}x")


if __name__ == "__main__":
  main()
