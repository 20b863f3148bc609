"""Exported semantic and classification models score what the trainer's evaluator scored.

Semantic: the shapes DANet demo (configs/shapes/danet_demo.textproto, small train crop, a
tiny backbone in place of ResNet-50 to keep the test short) is trained a few steps,
evaluated by the trainer (eval_metrics.json), exported by `export_from_config` (what
trainer/export.py runs), and both signatures run on the unpadded val images in a process
that can import only TensorFlow; the mIoU of those outputs (NumPy confusion matrix) must
equal the evaluator's. Classification: the same for top-1 on a small ImageNet-layout
fixture with images of different sizes, so the in-graph resize + centre crop matters.
"""
import os

import numpy as np
import pytest
from PIL import Image

from deeplab_axial import config as config_lib
from deeplab_axial.data import datasets
from deeplab_axial.data.converters import imagenet
from deeplab_axial.data.converters import shapes
from deeplab_axial.export import from_config
from deeplab_axial.models import builder
from deeplab_axial.training import experiment
from tests import helpers
from tests.export import export_fixtures

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_STEPS = 20
_WIDTHS = {"res2": 8, "res3": 8, "res4": 16, "res5": 16}


def _tiny_backbone(options, batch_norm_momentum=0.99, batch_norm_epsilon=1e-3):
  return helpers.tiny_backbone(_WIDTHS, output_stride=options.output_stride,
                               batch_norm=(batch_norm_momentum, batch_norm_epsilon))


def _train_and_evaluate(config, model_dir):
  experiment.run_experiment(config, "train", model_dir)
  experiment.run_experiment(config, "eval", model_dir)
  return experiment.read_metrics(os.path.join(model_dir, experiment.METRICS_FILE))[
      str(_STEPS)]


def _schedule(records):
  return [f'dataset.train_file_pattern: ["{records["train"]}"]',
          f'dataset.eval_file_pattern: ["{records["val"]}"]', f"train.steps: {_STEPS}",
          f"train.steps_per_loop: {_STEPS}", f"train.checkpoint_interval: {_STEPS}",
          f"eval.interval: {_STEPS}", "train.batch_size: 4", "solver.warmup_steps: 2",
          f"train.summary_interval: {_STEPS}"]


def _mean_iou(labels, predictions, num_classes, ignore_label):
  """mIoU over the classes present in the labels or predictions (NumPy)."""
  confusion = np.zeros((num_classes, num_classes), np.int64)
  for label, prediction in zip(labels, predictions):
    keep = label != ignore_label
    np.add.at(confusion, (label[keep], prediction[keep]), 1)
  true_positive = np.diag(confusion).astype(np.float64)
  union = confusion.sum(0) + confusion.sum(1) - true_positive
  present = union > 0
  return float(np.mean(true_positive[present] / union[present]))


def _train_evaluate_and_export(config, root):
  """(eval metrics, ExportResult) of `config` trained on the tiny stand-in backbone."""
  model_dir = str(root / "model")
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(builder, "build_backbone", _tiny_backbone)
    evaluated = _train_and_evaluate(config, model_dir)
    exported = from_config.export_from_config(config, model_dir, str(root / "export"))
  return evaluated, exported


@pytest.fixture(scope="module")
def trained_danet(tmp_path_factory):
  root = tmp_path_factory.mktemp("danet")
  # 13 val images: the last eval batch of 10 is padded with invalid images.
  records = shapes.ensure_shapes_tfrecords(str(root / "data"), num_train=16, num_val=13,
                                           num_shards=1, num_workers=1)
  config = config_lib.load_config(
      os.path.join(_REPO, "configs", "shapes", "danet_demo.textproto"),
      _schedule(records) + ["dataset.crop_size: [33, 33]",
                            "model.context_head.danet.inter_channels: 8"])
  return (records, *_train_evaluate_and_export(config, root))


@pytest.mark.slow
def test_exported_semantic_model_miou_on_shapes_val_equals_evaluator(trained_danet,
                                                                     tmp_path):
  records, evaluated, exported = trained_danet
  info = datasets.get_dataset_info("shapes")
  images, encoded, panoptic = export_fixtures.val_split(records["val"])
  assert len(images) == 13
  outputs = export_fixtures.run_signatures_in_plain_tf(
      exported.export_dir, [np.stack(b) for b in export_fixtures.batches(images, 5)],
      export_fixtures.batches(encoded, 5), str(tmp_path))
  labels = [p // info.label_divisor for p in panoptic]
  num_batches = len(export_fixtures.batches(images, 5))
  for signature in ("default", "bytes"):
    semantic = np.concatenate([outputs[f"{signature}/{b}/semantic"]
                               for b in range(num_batches)])
    assert semantic.shape == (13, 64, 64) and semantic.dtype == np.int32
    probs = outputs[f"{signature}/0/semantic_probs"]
    assert probs.shape == (5, 64, 64, info.num_classes)
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
    miou = _mean_iou(labels, semantic, info.num_classes, info.ignore_label)
    assert miou == pytest.approx(evaluated["miou"], abs=1e-9), signature
  # Equality is only telling if the model predicts more than one class.
  assert len(np.unique(semantic)) >= 3 and evaluated["miou"] > 0, evaluated


def _write_imagenet(root, synsets, sizes):
  """Colour-coded JPEGs (class c is bright in channel c) of the given sizes per split."""
  rng = np.random.default_rng(0)
  for split, count in (("train", 6), ("val", 3)):
    for label, synset in enumerate(synsets):
      folder = os.path.join(root, split, synset)
      os.makedirs(folder)
      for index in range(count):
        height, width = sizes[(label + index) % len(sizes)]
        pixels = rng.integers(0, 60, (height, width, 3))
        pixels[..., label] += 180
        Image.fromarray(pixels.astype(np.uint8)).save(
            os.path.join(folder, f"{synset}_{index}.JPEG"))


@pytest.fixture(scope="module")
def trained_classifier(tmp_path_factory):
  root = tmp_path_factory.mktemp("classifier")
  raw, records = str(root / "raw"), str(root / "records")
  _write_imagenet(raw, datasets.imagenet_synsets()[:3], [(20, 30), (36, 24), (24, 24)])
  for split in ("train", "val"):
    imagenet.convert_imagenet(raw, records, split, num_shards=1, num_workers=1,
                              show_progress=False)
  config = config_lib.load_config(
      os.path.join(_REPO, "configs", "imagenet", "axial_resnet_s_conv_stem.textproto"),
      _schedule({"train": f"{records}/train-*", "val": f"{records}/val-*"}) + [
          "dataset.crop_size: [16, 16]", "eval.resize_size: 20", "eval.batch_size: 4",
          "dataset.shuffle_buffer_size: 8", "model.backbone.output_stride: 32"])
  return (records, *_train_evaluate_and_export(config, root))


@pytest.mark.slow
def test_exported_classifier_top1_on_fixture_equals_evaluator(trained_classifier, tmp_path):
  records, evaluated, exported = trained_classifier
  images, encoded, labels = export_fixtures.val_split(f"{records}/val-*",
                                                      with_panoptic=False)
  assert len(images) == 9 and len({image.shape for image in images}) == 3
  # serving_default takes one size per batch: one image per batch; the bytes signature
  # takes the mixed sizes in one batch.
  outputs = export_fixtures.run_signatures_in_plain_tf(
      exported.export_dir, [image[None] for image in images], [encoded], str(tmp_path))
  labels = np.asarray(labels)
  default = np.concatenate([outputs[f"default/{i}/classes"] for i in range(len(images))])
  np.testing.assert_array_equal(default, outputs["bytes/0/classes"])
  top_5 = outputs["bytes/0/top_5"]
  probabilities = outputs["bytes/0/probabilities"]
  assert top_5.shape == (9, 5) and top_5.dtype == np.int32
  assert probabilities.shape == (9, 1000)
  np.testing.assert_array_equal(top_5[:, 0], default)
  # The 5 largest probabilities (untrained classes tie, so compare values, not ids).
  np.testing.assert_array_equal(np.take_along_axis(probabilities, top_5, axis=1),
                                -np.sort(-probabilities, axis=1)[:, :5])
  # The evaluator's Keras accuracies are float32: the same fraction, rounded to float32.
  assert np.float32(np.mean(default == labels)) == np.float32(evaluated["top1"])
  assert np.float32(np.mean((top_5 == labels[:, None]).any(1))) == np.float32(
      evaluated["top5"])
  # Equality is only telling if the classifier does not predict one class everywhere.
  assert len(np.unique(default)) >= 2, default
