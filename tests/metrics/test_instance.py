"""InstanceAP against pycocotools called directly on the same masks, and hand cases."""
import contextlib
import io

import numpy as np
from pycocotools import coco
from pycocotools import cocoeval
from pycocotools import mask as mask_utils
import pytest

from deeplab_axial.metrics import InstanceAP

DIVISOR, IGNORE, THINGS = 1000, 255, (1, 2)


def _metric():
  return InstanceAP(num_classes=3, ignore_label=IGNORE, label_divisor=DIVISOR,
                    thing_classes=THINGS)


def _random_image(rng, height=40, width=60):
  """Ground truth with instances and a crowd region; noisy scored predictions."""
  gt = np.zeros((height, width), np.int64)
  pred = np.zeros((height, width), np.int64)
  ids, scores = [], []
  for instance in range(1, 6):
    category = int(rng.choice(THINGS))
    h, w = rng.integers(4, 15, size=2)
    y, x = rng.integers(0, height - h), rng.integers(0, width - w)
    gt[y:y + h, x:x + w] = category * DIVISOR + instance
    dy, dx = rng.integers(-3, 4, size=2)
    predicted = category * DIVISOR + instance
    pred[max(y + dy, 0):y + h + dy, max(x + dx, 0):x + w + dx] = predicted
    ids.append(predicted)
    scores.append(float(rng.random()))
  gt[:6, :6] = THINGS[0] * DIVISOR  # Crowd.
  gt[-3:, :] = IGNORE * DIVISOR
  ids += [-1, -1]  # Empty slots.
  scores += [0.0, 0.0]
  return gt, pred, np.array(ids), np.array(scores)


def pycocotools_stats(images):
  """COCO mask AP computed here from the raw masks, without the metric's code."""
  gts, dets, image_infos = [], [], []
  for image_id, (gt, pred, ids, scores) in enumerate(images, start=1):
    image_infos.append({"id": image_id, "height": gt.shape[0], "width": gt.shape[1]})
    for value in np.unique(gt):
      if value // DIVISOR not in THINGS:
        continue
      rle = mask_utils.encode(np.asfortranarray((gt == value).astype(np.uint8)))
      gts.append({"id": len(gts) + 1, "image_id": image_id,
                  "category_id": int(value // DIVISOR), "segmentation": rle,
                  "area": float(mask_utils.area(rle)), "bbox": list(mask_utils.toBbox(rle)),
                  "iscrowd": int(value % DIVISOR == 0)})
    for segment_id, score in zip(ids, scores):
      mask = pred == segment_id
      if segment_id < 0 or not mask.any():
        continue
      dets.append({"image_id": image_id, "category_id": int(segment_id // DIVISOR),
                   "segmentation": mask_utils.encode(np.asfortranarray(mask.astype(np.uint8))),
                   "score": float(score)})
  with contextlib.redirect_stdout(io.StringIO()):
    ground_truth = coco.COCO()
    ground_truth.dataset = {"images": image_infos, "annotations": gts,
                            "categories": [{"id": c} for c in THINGS]}
    ground_truth.createIndex()
    evaluator = cocoeval.COCOeval(ground_truth, ground_truth.loadRes(dets), iouType="segm")
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
  return evaluator.stats[:6]


def test_matches_pycocotools():
  rng = np.random.default_rng(0)
  images = [_random_image(rng) for _ in range(4)]
  metric = _metric()
  for batch in (images[:2], images[2:]):
    metric.update_state(*(np.stack(parts) for parts in zip(*batch)))
  result = metric.result()
  expected = pycocotools_stats(images)
  ours = [result[k] for k in ("ap", "ap50", "ap75", "ap_small", "ap_medium", "ap_large")]
  np.testing.assert_allclose(ours, expected, atol=1e-12)
  assert 0 < result["ap"] < 1


def test_hand_cases():
  gt = np.zeros((1, 20, 20), np.int64)
  gt[0, 2:8, 2:8] = 1001
  gt[0, 10:18, 10:18] = 2001
  metric = _metric()
  metric.update_state(gt, gt, [[1001, 2001]], [[0.9, 0.8]])
  assert metric.result()["ap"] == pytest.approx(1.0)
  metric.reset_state()
  assert metric.result()["ap"] == 0.0  # Nothing predicted.
  wrong_class = np.where(gt == 1001, 2002, gt)
  metric.update_state(gt, wrong_class, [[2002, 2001]], [[0.9, 0.8]])
  # Class 2 has a perfect match but a higher-scored false positive: AP 0.5 (101-point
  # interpolation: precision 0.5 at every recall); class 1 has no detections: AP 0.
  assert metric.result()["ap"] == pytest.approx(0.25, abs=1e-9)


def test_update_from_instances_and_errors():
  gt = np.zeros((10, 10), np.int64)
  gt[:5, :5] = 1001
  metric = _metric()
  metric.update_from_instances(gt, (gt == 1001)[None], [1], [0.5])
  assert metric.result()["ap"] == pytest.approx(1.0)
  with pytest.raises(ValueError, match=r"classes contains \[0\]"):
    metric.update_from_instances(gt, (gt == 1001)[None], [0], [0.5])
  with pytest.raises(ValueError, match="masks must have shape"):
    metric.update_from_instances(gt, np.zeros((1, 4, 4), bool), [1], [0.5])
  with pytest.raises(ValueError, match="y_true must be an integer"):
    metric.update_from_instances(gt.astype(np.float32), (gt == 1001)[None], [1], [0.5])
  with pytest.raises(ValueError, match=r"y_pred contains \[9001\]"):
    metric.update_state(gt[None], np.full((1, 10, 10), 9001), [[9001]], [[1.0]])
