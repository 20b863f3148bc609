"""Task losses (per-image, global-batch normalised) and the task evaluators/pipelines."""
import numpy as np
import pytest
import tensorflow as tf

from deeplab_axial import config as config_lib
from deeplab_axial import losses
from deeplab_axial.data import datasets
from deeplab_axial.data.converters import shapes
from deeplab_axial import tasks
from deeplab_axial import ops
from deeplab_axial.tasks import classification
from deeplab_axial.tasks import semantic
from deeplab_axial.training import evaluation

_BATCH, _SIZE, _CLASSES = 4, 6, 3


def _segmentation_batch(seed=0):
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, _CLASSES, size=(_BATCH, _SIZE, _SIZE)).astype(np.int32)
  labels[0, :2] = 255
  labels[2, :, :3] = 0  # images differ in their counts of valid pixels and boundaries
  boundary = np.where(labels == 255, 255, (rng.random(labels.shape) < 0.3)).astype(np.int32)
  outputs = {
      "semantic_logits": rng.normal(size=(_BATCH, _SIZE, _SIZE, _CLASSES)),
      "position_logits": rng.normal(size=(_BATCH, _SIZE, _SIZE, _CLASSES)),
      # Saturated logits make the Gumbel-softmax relaxation deterministic (one-hot).
      "boundary_logits": rng.normal(size=(_BATCH, _SIZE, _SIZE, 1)) * 3.0,
      "class_logits": rng.normal(size=(_BATCH, 2, _CLASSES, _CLASSES + 1)),
      "mask_logits": rng.normal(size=(_BATCH, 2, 3, 3, _CLASSES)),
  }
  outputs = {k: v.astype(np.float32) for k, v in outputs.items()}
  return {"semantic": labels, "boundary": boundary}, outputs


@pytest.fixture
def exact_relaxation(monkeypatch):
  """The Gumbel-softmax relaxation replaced by the one-hot of the argmax.

  These tests check how the Gated-SCNN terms are pooled (per image, per replica), which
  needs the same relaxed probabilities however the batch is split. Random noise aside,
  the relaxation of even saturated logits is one-hot only up to float32 rounding
  (~6e-8, which on some CPUs changes with the batch's vector layout), and the dual-task
  term's boundary mask (potential >= 1e-8, the paper's threshold) counts that rounding.
  """
  monkeypatch.setattr(
      losses, "gumbel_softmax",
      lambda logits, temperature=1.0, seed=None: tf.one_hot(tf.argmax(logits, -1),
                                                            tf.shape(logits)[-1]))


def _numpy_cross_entropy(labels, logits, smoothing=0.0):
  """Mean over labelled pixels of each image of the (smoothed) softmax CE, [batch]."""
  log_p = logits - logits.max(-1, keepdims=True)
  log_p = log_p - np.log(np.exp(log_p).sum(-1, keepdims=True))
  valid = labels != 255
  picked = np.take_along_axis(log_p, np.where(valid, labels, 0)[..., None], -1)[..., 0]
  per_pixel = -(1 - smoothing) * picked - smoothing * log_p.mean(-1)
  return (per_pixel * valid).sum((1, 2)) / valid.sum((1, 2))


def test_semantic_loss_matches_numpy_with_auxiliary_and_smoothing():
  targets, outputs = _segmentation_batch()
  loss = losses.SemanticSegmentationLoss(
      semantic_weight=2.0, top_k_fraction=1.0, label_smoothing=0.1,
      auxiliary_weights={"position_logits": 0.4})
  got = loss(targets, outputs, global_batch_size=8)
  main = _numpy_cross_entropy(targets["semantic"], outputs["semantic_logits"], 0.1)
  aux = _numpy_cross_entropy(targets["semantic"], outputs["position_logits"], 0.1)
  assert loss.part_names == ("semantic", "position_aux")
  np.testing.assert_allclose(got["semantic"], 2.0 * main.sum() / 8, rtol=1e-5)
  np.testing.assert_allclose(got["position_aux"], 0.4 * aux.sum() / 8, rtol=1e-5)
  np.testing.assert_allclose(got["total"], got["semantic"] + got["position_aux"], rtol=1e-6)


def _single_images(function, *arrays, **kwargs):
  """`function` (batch-pooled) applied to each image alone."""
  return np.array([function(*(a[i:i + 1] for a in arrays), **kwargs) for i in range(_BATCH)])


@pytest.mark.usefixtures("exact_relaxation")
def test_per_image_gated_scnn_and_atm_terms_equal_the_pooled_function_per_image():
  targets, outputs = _segmentation_batch()
  labels = targets["semantic"]
  np.testing.assert_allclose(
      losses.balanced_boundary_bce(targets["boundary"], outputs["boundary_logits"],
                                   per_image=True),
      _single_images(losses.balanced_boundary_bce, targets["boundary"],
                     outputs["boundary_logits"]), rtol=1e-5)
  semantic = outputs["semantic_logits"]
  per_image = losses.dual_task_regularizer(semantic, labels, outputs["boundary_logits"],
                                           per_image=True)
  for name, values in per_image.items():
    expected = [losses.dual_task_regularizer(semantic[i:i + 1], labels[i:i + 1],
                                             outputs["boundary_logits"][i:i + 1])[name]
                for i in range(_BATCH)]
    np.testing.assert_allclose(values, expected, rtol=1e-5, atol=1e-6)
  atm = losses.atm_loss(outputs["class_logits"][:, 0], outputs["mask_logits"][:, 0], labels,
                        per_image=True)
  for name in ("class_cross_entropy", "mask_focal", "mask_dice"):
    expected = [losses.atm_loss(outputs["class_logits"][i:i + 1, 0],
                                outputs["mask_logits"][i:i + 1, 0], labels[i:i + 1])[name]
                for i in range(_BATCH)]
    np.testing.assert_allclose(atm[name], expected, rtol=1e-5)


def _task_losses():
  return {
      "semantic": losses.SemanticSegmentationLoss(
          top_k_fraction=0.5, auxiliary_weights={"position_logits": 1.0}),
      "gated_scnn": losses.GatedScnnLoss(top_k_fraction=1.0),
      "segvit": losses.SegVitLoss(),
      "classification": losses.ClassificationLoss(label_smoothing=0.1),
  }


def _inputs_for(name):
  targets, outputs = _segmentation_batch()
  if name == "classification":
    rng = np.random.default_rng(1)
    return ({"label": rng.integers(0, 5, size=_BATCH).astype(np.int32)},
            rng.normal(size=(_BATCH, 5)).astype(np.float32))
  return targets, outputs


@pytest.mark.parametrize("name", ["semantic", "gated_scnn", "segvit", "classification"])
@pytest.mark.usefixtures("exact_relaxation")
def test_task_loss_under_two_replicas_equals_single_device(two_cpu_strategy, name):
  loss = _task_losses()[name]
  targets, outputs = _inputs_for(name)
  single = {k: float(v) for k, v in loss(targets, outputs, _BATCH).items()}
  assert set(single) == {"total", *loss.part_names}

  def per_replica(context):
    start = context.replica_id_in_sync_group * (_BATCH // 2)
    take = lambda tree: tf.nest.map_structure(lambda a: a[start:start + _BATCH // 2], tree)
    return take(targets), take(outputs)

  values = two_cpu_strategy.experimental_distribute_values_from_function(per_replica)
  per_replica_losses = two_cpu_strategy.run(lambda t, o: loss(t, o, _BATCH), args=values)
  for key, value in single.items():
    summed = two_cpu_strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica_losses[key],
                                     axis=None)
    np.testing.assert_allclose(float(summed), value, rtol=1e-5, atol=1e-7, err_msg=key)


# ----------------------------------------------------------------------- evaluators


@pytest.fixture(scope="module")
def shapes_records(tmp_path_factory):
  directory = tmp_path_factory.mktemp("shapes")
  return shapes.ensure_shapes_tfrecords(str(directory), image_size=(33, 33), num_train=8,
                                        num_val=4)


def _numpy_miou(labels, predictions, num_classes, ignore_label=255):
  valid = labels != ignore_label
  ious = []
  for c in range(num_classes):
    gt, pred = (labels == c) & valid, (predictions == c) & valid
    union = (gt | pred).sum()
    if union:
      ious.append((gt & pred).sum() / union)
  return float(np.mean(ious))


class _ConstantModel:
  """Predicts `class_id` everywhere (logits one-hot * 5)."""

  def __init__(self, class_id, num_classes):
    self.class_id, self.num_classes = class_id, num_classes

  def __call__(self, images, training=False):
    del training
    logits = tf.one_hot(tf.fill(tf.shape(images)[:3], self.class_id), self.num_classes) * 5.0
    return {"semantic_logits": logits}


@pytest.mark.parametrize("use_strategy", [False, True])
def test_semantic_evaluator_matches_numpy(shapes_records, use_strategy, two_cpu_strategy):
  info = datasets.get_dataset_info("shapes")
  strategy = two_cpu_strategy if use_strategy else tf.distribute.get_strategy()
  config = config_lib.parse_config(f"""
      model {{ meta_architecture: "semantic" context_head {{ type: "gated_scnn" }} }}
      dataset {{ name: "shapes" crop_size: [33, 33]
                 train_file_pattern: "{shapes_records['train']}"
                 eval_file_pattern: "{shapes_records['val']}" }}
      eval {{ batch_size: 2 crop_size: [33, 33] }}""")
  task = tasks.create_task(config, info, [shapes_records["train"]],
                           [shapes_records["val"]])
  results, _ = evaluation.evaluate_task(task, _ConstantModel(5, info.num_classes), strategy)
  labels = np.concatenate([b["panoptic"].numpy() // info.label_divisor
                           for b in task.eval_dataset()])
  assert labels.shape == (4, 33, 33)
  expected = _numpy_miou(labels, np.full_like(labels, 5), info.num_classes)
  assert results["miou"] == pytest.approx(expected, abs=1e-9)
  # A constant prediction has no contours inside the image: boundary recall 0.
  assert results["boundary_recall"] == 0.0 and results["boundary_f_score"] == 0.0


def test_semantic_training_batches_hold_labels_and_boundaries(shapes_records):
  info = datasets.get_dataset_info("shapes")
  config = config_lib.parse_config(f"""
      model {{ meta_architecture: "semantic" context_head {{ type: "gated_scnn" }} }}
      dataset {{ name: "shapes" crop_size: [33, 33] }}
      train {{ batch_size: 2 }}""")
  task = tasks.create_task(config, info, [shapes_records["train"]],
                           [shapes_records["val"]])
  batch = next(iter(task.train_dataset(None)))
  assert set(batch) == {"image", "semantic", "boundary"}
  semantic, boundary = batch["semantic"].numpy(), batch["boundary"].numpy()
  assert semantic.shape == (2, 33, 33)
  assert set(np.unique(semantic)) <= set(range(info.num_classes)) | {255}
  # Boundary = a different label within 2 px (NumPy brute force on the batch).
  expected = np.zeros_like(semantic)
  for dy in range(-2, 3):
    for dx in range(-2, 3):
      if (dy, dx) == (0, 0) or dy * dy + dx * dx > 4:
        continue
      shifted = np.full_like(semantic, -1)
      ys, xs = slice(max(dy, 0), 33 + min(dy, 0)), slice(max(dx, 0), 33 + min(dx, 0))
      yd, xd = slice(max(-dy, 0), 33 + min(-dy, 0)), slice(max(-dx, 0), 33 + min(-dx, 0))
      shifted[:, yd, xd] = semantic[:, ys, xs]
      expected |= (shifted >= 0) & (shifted != semantic)
  expected = np.where(semantic == 255, 255, expected)
  np.testing.assert_array_equal(boundary, expected)
  assert task.loss_names == ("total", "semantic", "boundary", "dual_task_consistency",
                             "dual_task_cross_entropy")


def test_classification_evaluator_matches_numpy_top_k(two_cpu_strategy):
  rng = np.random.default_rng(3)
  table = rng.normal(size=(10, 7)).astype(np.float32)
  labels = rng.integers(0, 7, size=10).astype(np.int32)
  images = np.broadcast_to(np.arange(10, dtype=np.float32)[:, None, None, None],
                           (10, 2, 2, 3)).copy()

  def model(batch_images, training=False):
    del training
    return tf.gather(table, tf.cast(batch_images[:, 0, 0, 0], tf.int32))

  dataset = tf.data.Dataset.from_tensor_slices({"image": images, "label": labels}).batch(4)
  with two_cpu_strategy.scope():
    evaluator = classification.ClassificationEvaluator(model)
  # 10 images in batches of 4 over 2 replicas: the last batch is padded with 2 invalid
  # images, which must not count.
  results = evaluation.EvalLoop(two_cpu_strategy, evaluator, 4).evaluate(dataset)
  ranks = (table > table[np.arange(10), labels][:, None]).sum(1)
  assert results["top1"] == pytest.approx(np.mean(ranks < 1))
  assert results["top5"] == pytest.approx(np.mean(ranks < 5))


def test_classification_task_rejects_non_square_crops():
  config = config_lib.parse_config("""
      model { meta_architecture: "classification" backbone { name: "resnet50" } }
      dataset { name: "imagenet" crop_size: [32, 48]
                augmentation { random_resized_crop: true } }""")
  with pytest.raises(ValueError, match=r"dataset.crop_size \[32, 48\] must be square"):
    tasks.create_task(config, datasets.get_dataset_info("imagenet"), ["a"], ["b"])


@pytest.mark.parametrize("ignore_crowd", [False, True])
def test_semantic_targets_honour_ignore_crowd_in_semantic(ignore_crowd):
  """Crowd pixels (thing class, instance 0) are ignored only when asked, exactly as in the
  panoptic task's targets."""
  info = datasets.get_dataset_info("shapes")
  thing, stuff, divisor = info.thing_class_ids[0], 4, info.label_divisor
  assert stuff not in info.thing_class_ids
  panoptic = np.array([[[thing * divisor, thing * divisor + 3],
                        [stuff * divisor, info.ignore_label * divisor]]], np.int32)
  got = semantic.semantic_targets({"image": np.zeros((1, 2, 2, 3), np.float32),
                                   "panoptic": panoptic}, info,
                                  ignore_crowd_in_semantic=ignore_crowd)["semantic"]
  crowd = info.ignore_label if ignore_crowd else thing
  np.testing.assert_array_equal(got, [[[crowd, thing], [stuff, info.ignore_label]]])
  panoptic_targets = ops.generate_panoptic_targets(
      panoptic, label_divisor=divisor, ignore_label=info.ignore_label,
      thing_class_ids=info.thing_class_ids, ignore_crowd_in_semantic=ignore_crowd)
  np.testing.assert_array_equal(got, panoptic_targets["semantic"])
