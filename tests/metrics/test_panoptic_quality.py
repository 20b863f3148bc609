"""PanopticQuality against cityscapesscripts, a plain-Python panopticapi re-implementation
and hand-checked cases; official-format writers read by the official evaluator."""
import collections
import json
import os

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

from cityscapesscripts.evaluation import evalPanopticSemanticLabeling as cs_eval
from deeplab_axial.data import prediction_writers
from deeplab_axial.metrics import PanopticQuality

NUM_CLASSES = 6
STUFF = (0, 1, 2)  # class 2 never appears: an empty class.
THINGS = (3, 4, 5)
IGNORE = 255
DIVISOR = 1000
# Non-contiguous dataset category ids, as in COCO / Cityscapes label ids.
CATEGORY_MAP = {0: 7, 1: 11, 2: 13, 3: 24, 4: 26, 5: 33}


def _metric():
  return PanopticQuality(NUM_CLASSES, IGNORE, DIVISOR, THINGS)


def _box(rng, height, width, max_size):
  h, w = rng.integers(4, max_size, size=2)
  y, x = rng.integers(0, height - h), rng.integers(0, width - w)
  return slice(y, y + h), slice(x, x + w)


def random_pair(rng, height=64, width=128):
  """A ground-truth / prediction pair of panoptic maps with every special case.

  Ground truth: stuff bands, thing boxes (pairs touching edge to edge), one crowd region,
  void boxes. Prediction: jittered copies with class swaps, dropped and spurious instances,
  predictions over void and crowd, several instance ids on one stuff class, void.
  """
  gt = np.zeros((height, width), np.int64)
  gt[:, rng.integers(width // 4, 3 * width // 4):] = 1 * DIVISOR
  pred = gt.copy()
  instance_counter = collections.Counter()
  for _ in range(rng.integers(3, 7)):
    category = int(rng.choice(THINGS[:2] if rng.random() < 0.7 else THINGS))
    rows, cols = _box(rng, height, width, 24)
    pieces = [(rows, cols)]
    if rng.random() < 0.5 and cols.stop + 8 < width:  # A touching twin to the right.
      pieces.append((rows, slice(cols.stop, cols.stop + 8)))
    for piece_rows, piece_cols in pieces:
      instance_counter[category] += 1
      gt[piece_rows, piece_cols] = category * DIVISOR + instance_counter[category]
      fate = rng.random()
      if fate < 0.15:
        continue  # Missed instance: stays background in the prediction.
      dy, dx = rng.integers(-3, 4, size=2)
      shifted = (slice(max(piece_rows.start + dy, 0), max(piece_rows.stop + dy, 1)),
                 slice(max(piece_cols.start + dx, 0), max(piece_cols.stop + dx, 1)))
      predicted_class = int(rng.choice(THINGS)) if fate > 0.85 else category
      pred[shifted] = predicted_class * DIVISOR + int(rng.integers(1, 50))
  crowd = _box(rng, height, width, 20)
  gt[crowd] = THINGS[1] * DIVISOR
  if rng.random() < 0.7:  # A prediction mostly on the crowd region.
    pred[crowd[0], crowd[1].start:crowd[1].stop - 2] = THINGS[1] * DIVISOR + 77
  void = _box(rng, height, width, 16)
  gt[void] = IGNORE * DIVISOR
  gt[:, :2] = IGNORE * DIVISOR
  if rng.random() < 0.7:  # A prediction mostly on void.
    pred[void[0], void[1].start:void[1].stop - 1] = THINGS[0] * DIVISOR + 88
  pred[_box(rng, height, width, 10)] = THINGS[2] * DIVISOR + 99  # Spurious instance.
  pred[_box(rng, height, width, 10)] = 1 * DIVISOR + 5  # Stuff with an instance id.
  pred[_box(rng, height, width, 8)] = IGNORE * DIVISOR
  return gt.astype(np.int32), pred.astype(np.int32)


def random_pairs(count, seed, height=64, width=128):
  rng = np.random.default_rng(seed)
  pairs = [random_pair(rng, height, width) for _ in range(count)]
  return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


def _update_fn(metric):
  @tf.function
  def update(y_true, y_pred):
    metric.update_state(y_true, y_pred)
  return update


def _numpy_results(result):
  return {k: np.asarray(v) for k, v in result.items()}


# ----------------------------------------------------------------------------------------
# Cityscapes format written here independently of the package's writers.


def write_cityscapes_ground_truth(folder, image_id, panoptic):
  """Writes `panoptic` as a cityscapesscripts ground-truth PNG; returns its annotation."""
  semantic, instance = panoptic // DIVISOR, panoptic % DIVISOR
  label_id = np.vectorize(lambda s: CATEGORY_MAP.get(int(s), 0))(semantic)
  is_instance = np.isin(semantic, THINGS) & (instance > 0)
  segment = np.where(is_instance, label_id * 1000 + instance, label_id)
  segments_info = []
  for segment_id in np.unique(segment):
    if segment_id == 0:
      continue
    category = int(segment_id // 1000 if segment_id >= 1000 else segment_id)
    ys, xs = np.nonzero(segment == segment_id)
    is_thing = category in [CATEGORY_MAP[c] for c in THINGS]
    segments_info.append({
        "id": int(segment_id), "category_id": category, "area": int(len(ys)),
        "bbox": [int(xs.min()), int(ys.min()), int(np.ptp(xs) + 1), int(np.ptp(ys) + 1)],
        "iscrowd": int(is_thing and segment_id < 1000)})
  rgb = np.stack([segment % 256, segment // 256 % 256, segment // 65536], -1).astype(np.uint8)
  file_name = f"{image_id}_gtFine_panoptic.png"
  Image.fromarray(rgb).save(os.path.join(folder, file_name))
  return {"image_id": image_id, "file_name": file_name, "segments_info": segments_info}


def cityscapes_categories():
  return {CATEGORY_MAP[c]: {"id": CATEGORY_MAP[c], "name": f"class{c}",
                            "isthing": int(c in THINGS)} for c in range(NUM_CLASSES)}


def _assert_matches_official(ours, official):
  for ours_suffix, group in (("", "All"), ("_th", "Things"), ("_st", "Stuff")):
    for key in ("pq", "sq", "rq"):
      assert ours[key + ours_suffix] == pytest.approx(official[group][key], abs=1e-9), (
          key + ours_suffix)
    assert ours["num_classes_evaluated" + ours_suffix] == official[group]["n"]
  for train_id, category in CATEGORY_MAP.items():
    for key in ("pq", "sq", "rq"):
      assert ours["per_class_" + key][train_id] == pytest.approx(
          official["per_class"][category][key], abs=1e-9)


def test_equals_cityscapesscripts(tmp_path):
  gt, pred = random_pairs(6, seed=1)
  gt_dir = tmp_path / "gt"
  gt_dir.mkdir()
  annotations = []
  with prediction_writers.CityscapesPanopticWriter(
      str(tmp_path), DIVISOR, IGNORE, THINGS, category_map=CATEGORY_MAP) as writer:
    for i in range(len(gt)):
      image_id = f"city_{i:06d}_000019"
      annotations.append((write_cityscapes_ground_truth(str(gt_dir), image_id, gt[i]),
                          writer.write(image_id, pred[i])))
  stat = cs_eval.pq_compute_single_core(0, annotations, str(gt_dir), writer.png_dir,
                                        cityscapes_categories())
  official = cs_eval.average_pq(stat, cityscapes_categories())

  metric = _metric()
  metric.update_state(gt[:4], pred[:4])  # Streaming: two batches.
  metric.update_state(gt[4:], pred[4:])
  ours = _numpy_results(metric.result())
  _assert_matches_official(ours, official)
  for train_id, category in CATEGORY_MAP.items():
    assert ours["per_class_tp"][train_id] == stat[category].tp
    assert ours["per_class_fp"][train_id] == stat[category].fp
    assert ours["per_class_fn"][train_id] == stat[category].fn
  # The generated data exercises what it claims to.
  assert ours["per_class_fp"].sum() > 0 and ours["per_class_fn"].sum() > 0
  assert ours["num_classes_evaluated_st"] == 2  # Class 2 is empty and excluded.


def test_writer_output_is_read_by_evaluate_panoptic(tmp_path, monkeypatch, capsys):
  """cityscapesscripts' own entry point reads our JSON + PNGs (multiprocessing bypassed)."""
  gt, pred = random_pairs(2, seed=2)
  gt_dir = tmp_path / "cityscapes_panoptic_val_gt"
  gt_dir.mkdir()
  gt_annotations = [write_cityscapes_ground_truth(str(gt_dir), f"c_{i:06d}_000019", gt[i])
                    for i in range(len(gt))]
  gt_json = tmp_path / "gt.json"
  gt_json.write_text(json.dumps({
      "annotations": gt_annotations,
      "categories": list(cityscapes_categories().values())}))
  writer = prediction_writers.CityscapesPanopticWriter(
      str(tmp_path), DIVISOR, IGNORE, THINGS, category_map=CATEGORY_MAP)
  for i in range(len(pred)):
    writer.write(f"c_{i:06d}_000019", pred[i])
  writer.close()
  assert os.path.isfile(tmp_path / "cityscapes_panoptic_val.json")
  assert os.path.isfile(tmp_path / "cityscapes_panoptic_val" / "c_000000_000019_panoptic.png")

  def single_core(matched, gt_folder, pred_folder, categories):
    return cs_eval.pq_compute_single_core(0, matched, gt_folder, pred_folder, categories)

  monkeypatch.setattr(cs_eval, "pq_compute_multi_core", single_core)
  official = cs_eval.evaluatePanoptic(
      str(gt_json), str(gt_dir), writer.json_path, writer.png_dir,
      str(tmp_path / "results.json"))
  capsys.readouterr()
  metric = _metric()
  metric.update_state(gt, pred)
  _assert_matches_official(_numpy_results(metric.result()), official)


# ----------------------------------------------------------------------------------------
# COCO format: a plain-Python re-implementation of the panopticapi `pq_compute` rules.


def _read_coco_png(folder, annotation):
  rgb = np.asarray(Image.open(os.path.join(folder, annotation["file_name"])), np.int64)
  return rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]


def reference_pq(pairs, categories):
  """COCO panopticapi PQ of [(gt_ids, gt_segments, pred_ids, pred_segments)].

  `*_segments` map segment id -> {"category_id", "iscrowd"}; id 0 is void.
  """
  stats = collections.defaultdict(lambda: {"iou": 0.0, "tp": 0, "fp": 0, "fn": 0})
  for gt_ids, gt_segments, pred_ids, pred_segments in pairs:
    gt_area = collections.Counter(gt_ids.ravel().tolist())
    pred_area = collections.Counter(pred_ids.ravel().tolist())
    overlap = collections.Counter(zip(gt_ids.ravel().tolist(), pred_ids.ravel().tolist()))
    matched_gt, matched_pred = set(), set()
    for (g, p), inter in overlap.items():
      if g == 0 or p == 0 or gt_segments[g]["iscrowd"]:
        continue
      if gt_segments[g]["category_id"] != pred_segments[p]["category_id"]:
        continue
      iou = inter / (gt_area[g] + pred_area[p] - inter - overlap.get((0, p), 0))
      if iou > 0.5:
        stats[gt_segments[g]["category_id"]]["tp"] += 1
        stats[gt_segments[g]["category_id"]]["iou"] += iou
        matched_gt.add(g)
        matched_pred.add(p)
    crowd_of = {}
    for g, info in gt_segments.items():
      if info["iscrowd"]:
        crowd_of[info["category_id"]] = g
      elif g not in matched_gt:
        stats[info["category_id"]]["fn"] += 1
    for p, info in pred_segments.items():
      if p in matched_pred:
        continue
      ignored = overlap.get((0, p), 0) + overlap.get((crowd_of.get(info["category_id"]), p), 0)
      if ignored / pred_area[p] <= 0.5:
        stats[info["category_id"]]["fp"] += 1
  results = {}
  for group, wanted in (("All", (0, 1)), ("Things", (1,)), ("Stuff", (0,))):
    per_class = []
    for category, isthing in categories.items():
      s = stats[category]
      if isthing in wanted and s["tp"] + s["fp"] + s["fn"]:
        denominator = s["tp"] + 0.5 * s["fp"] + 0.5 * s["fn"]
        per_class.append((s["iou"] / denominator, s["iou"] / s["tp"] if s["tp"] else 0.0,
                          s["tp"] / denominator))
    results[group] = dict(zip(("pq", "sq", "rq"), np.mean(per_class, axis=0)))
  return results


def _coco_ground_truth(panoptic, rng):
  """Random-id COCO encoding of a ground-truth panoptic map (crowd flagged)."""
  ids = np.zeros(panoptic.shape, np.int64)
  segments = {}
  for value in np.unique(panoptic):
    semantic, instance = divmod(int(value), DIVISOR)
    if semantic == IGNORE:
      continue
    segment_id = int(rng.integers(1, 256 ** 3))
    ids[panoptic == value] = segment_id
    segments[segment_id] = {"category_id": CATEGORY_MAP[semantic],
                            "iscrowd": int(semantic in THINGS and instance == 0)}
  return ids, segments


def test_equals_coco_rules_reimplementation(tmp_path):
  gt, pred = random_pairs(5, seed=3, height=48, width=80)
  rng = np.random.default_rng(3)
  pairs = []
  with prediction_writers.CocoPanopticWriter(
      str(tmp_path), DIVISOR, IGNORE, THINGS, category_map=CATEGORY_MAP) as writer:
    for i in range(len(gt)):
      annotation = writer.write(397133 + i, pred[i])
      assert annotation["file_name"] == f"{397133 + i:012d}.png"
      pred_ids = _read_coco_png(writer.png_dir, annotation)
      pred_segments = {s["id"]: s for s in annotation["segments_info"]}
      for s in annotation["segments_info"]:
        assert s["area"] == np.sum(pred_ids == s["id"]) and s["iscrowd"] == 0
      pairs.append(_coco_ground_truth(gt[i], rng) + (pred_ids, pred_segments))
  written = json.loads(open(writer.json_path, encoding="utf-8").read())
  assert len(written["annotations"]) == len(gt)
  categories = {CATEGORY_MAP[c]: int(c in THINGS) for c in range(NUM_CLASSES)}
  reference = reference_pq(pairs, categories)

  metric = _metric()
  for i in range(len(gt)):  # Unbatched [h, w] updates.
    metric.update_state(gt[i], pred[i])
  ours = _numpy_results(metric.result())
  for suffix, group in (("", "All"), ("_th", "Things"), ("_st", "Stuff")):
    for key in ("pq", "sq", "rq"):
      assert ours[key + suffix] == pytest.approx(reference[group][key], abs=1e-9)


# ----------------------------------------------------------------------------------------
# Hand-checked cases and modes.


def test_hand_checked_case():
  # Classes: 0 stuff, 1 stuff, 2 thing (crowd at 2000), 3 thing (never seen).
  metric = PanopticQuality(num_classes=4, ignore_label=255, label_divisor=1000,
                           thing_classes=[2, 3])
  gt = np.array([[0, 0, 2001, 2001, 2000, 2000],
                 [1000, 1000, 2002, 255000, 2000, 2000]])
  pred = np.array([[0, 0, 2001, 2001, 2003, 2003],
                   [1000, 0, 2002, 2002, 2003, 1000]])
  metric.update_state(gt, pred)
  r = _numpy_results(metric.result())
  # Class 0: IoU 2/3 (TP). Class 1: gt 2 px vs pred 2 px overlapping 1 (IoU 1/3): FN + FP.
  # Class 2: 2001 exact; 2002 IoU 1/(1+2-1-1) = 1 (void removed); 2003 lies entirely on the
  # crowd region of its class, so it is not a false positive; 1000 covers one crowd pixel
  # of another class, which does not excuse it.
  np.testing.assert_allclose(r["per_class_pq"], [2 / 3, 0, 1, 0])
  np.testing.assert_allclose(r["per_class_tp"], [1, 0, 2, 0])
  np.testing.assert_allclose(r["per_class_fp"], [0, 1, 0, 0])
  np.testing.assert_allclose(r["per_class_fn"], [0, 1, 0, 0])
  assert r["pq"] == pytest.approx((2 / 3 + 0 + 1) / 3)
  assert r["pq_st"] == pytest.approx(1 / 3) and r["pq_th"] == pytest.approx(1.0)
  assert r["rq_st"] == pytest.approx((1 + 0) / 2)


def test_iou_of_exactly_half_does_not_match():
  metric = PanopticQuality(num_classes=2, ignore_label=255, label_divisor=100,
                           thing_classes=[1])
  metric.update_state(np.array([[101, 101, 0, 0]]), np.array([[101, 0, 0, 0]]))
  r = _numpy_results(metric.result())
  np.testing.assert_allclose(r["per_class_tp"], [1, 0])
  np.testing.assert_allclose([r["per_class_fp"][1], r["per_class_fn"][1]], [1, 1])


def test_graph_mode_matches_eager_and_reset():
  gt, pred = random_pairs(4, seed=4, height=32, width=48)
  eager = _metric()
  eager.update_state(gt, pred)
  graph = _metric()
  update = _update_fn(graph)
  update(tf.constant(gt[:2]), tf.constant(pred[:2]))
  update(tf.constant(gt[2:]), tf.constant(pred[2:]))
  for key, value in _numpy_results(eager.result()).items():
    np.testing.assert_allclose(graph.result()[key], value, rtol=0, atol=1e-12, err_msg=key)
  graph.reset_state()
  assert float(tf.reduce_sum(graph.result()["per_class_tp"])) == 0


def test_distributed_sum_equals_single_device(two_cpu_strategy):
  gt, pred = random_pairs(4, seed=5, height=32, width=48)
  single = _metric()
  single.update_state(gt, pred)
  with two_cpu_strategy.scope():
    distributed = _metric()
  dataset = tf.data.Dataset.from_tensor_slices((gt, pred)).batch(4)

  @tf.function
  def step(batch):
    two_cpu_strategy.run(distributed.update_state, args=batch)

  for batch in two_cpu_strategy.experimental_distribute_dataset(dataset):
    step(batch)
  per_replica_tp = [float(tf.reduce_sum(v)) for v in
                    two_cpu_strategy.experimental_local_results(distributed.tp)]
  assert len(per_replica_tp) == 2 and min(per_replica_tp) > 0  # Both replicas did work.
  for key, value in _numpy_results(single.result()).items():
    np.testing.assert_allclose(distributed.result()[key], value, atol=1e-12, err_msg=key)


def test_config_round_trip():
  metric = PanopticQuality(NUM_CLASSES, IGNORE, DIVISOR, THINGS, max_instances_per_category=256)
  clone = PanopticQuality.from_config(metric.get_config())
  assert clone.get_config() == metric.get_config()
  assert clone.offset == 256 * 256


@pytest.mark.parametrize("y_true, y_pred, message", [
    (np.zeros((2, 4), np.int32), np.zeros((2, 4), np.float32), "y_pred must be an integer"),
    (np.zeros((2, 4), np.float64), np.zeros((2, 4), np.int32), "y_true must be an integer"),
    (np.zeros((2, 4), np.int32), np.zeros((2, 5), np.int32), "same shape"),
    (np.zeros((1, 2, 2, 4), np.int32), np.zeros((1, 2, 2, 4), np.int32), "y_true must have"),
    (np.zeros((2, 4), np.int32), np.full((2, 4), 7003, np.int32), r"y_pred contains \[7003\]"),
    (np.full((2, 4), -1, np.int32), np.zeros((2, 4), np.int32), r"y_true contains \[-1\]"),
])
def test_bad_input_raises_value_error(y_true, y_pred, message):
  with pytest.raises(ValueError, match=message):
    _metric().update_state(y_true, y_pred)


def test_bad_ids_inside_tf_function_fail_with_the_message():
  metric = _metric()
  update = _update_fn(metric)
  with pytest.raises(tf.errors.InvalidArgumentError, match="y_pred contains values outside"):
    update(tf.zeros((2, 4), tf.int32), tf.fill((2, 4), 9000))


@pytest.mark.parametrize("kwargs, message", [
    ({"thing_classes": [6]}, "thing_classes"),
    ({"thing_classes": [3], "offset": 10}, "offset must be >="),
    ({"thing_classes": [3], "max_instances_per_category": 2000}, "max_instances_per_category"),
])
def test_bad_constructor_arguments(kwargs, message):
  with pytest.raises(ValueError, match=message):
    PanopticQuality(NUM_CLASSES, IGNORE, DIVISOR, **kwargs)


def test_hashed_pair_path_equals_dense_path(monkeypatch):
  """Batches with very many segments count pairs by hashing; both paths must agree."""
  from deeplab_axial.metrics import panoptic_quality  # pylint: disable=import-outside-toplevel
  gt, pred = random_pairs(3, seed=6, height=32, width=48)
  dense = _metric()
  dense.update_state(gt, pred)
  monkeypatch.setattr(panoptic_quality, "_DENSE_PAIR_LIMIT", 0)
  hashed = _metric()
  hashed.update_state(gt, pred)
  for key, value in _numpy_results(dense.result()).items():
    np.testing.assert_allclose(hashed.result()[key], value, atol=1e-12, err_msg=key)


def test_batch_with_no_images_is_a_no_op():
  metric = _metric()
  metric.update_state(np.zeros((0, 4, 4), np.int32), np.zeros((0, 4, 4), np.int32))
  assert float(metric.result()["pq"]) == 0.0


def test_official_writer_formats_ids_and_bad_format(tmp_path):
  panoptic = np.array([[3 * DIVISOR + 1, 3 * DIVISOR + 1], [0, IGNORE * DIVISOR]])
  label_space = {"label_divisor": DIVISOR, "ignore_label": IGNORE, "thing_class_ids": THINGS,
                 "category_ids": [CATEGORY_MAP[c] for c in range(NUM_CLASSES)]}
  coco = prediction_writers.official_writer("coco", str(tmp_path / "coco"), **label_space)
  # A COCO id read as text ("139") is COCO's int id 139, file 000000000139.png.
  annotation = coco.write("139", panoptic)
  assert annotation["image_id"] == 139 and annotation["file_name"] == "000000000139.png"
  assert coco.write("frame_a", panoptic)["file_name"] == "frame_a.png"
  assert sorted(s["category_id"] for s in annotation["segments_info"]) == [7, 24]
  cityscapes = prediction_writers.official_writer("cityscapes", str(tmp_path / "cs"),
                                                  **label_space)
  annotation = cityscapes.write("aachen_000000_000019", panoptic)
  assert annotation["file_name"] == "aachen_000000_000019_panoptic.png"
  assert sorted(s["id"] for s in annotation["segments_info"]) == [7, 24001]
  with pytest.raises(ValueError, match=r"output_format must be one of \('coco', "
                                       r"'cityscapes'\), got 'pascal'"):
    prediction_writers.official_writer("pascal", str(tmp_path), **label_space)
