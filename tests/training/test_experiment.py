"""run_experiment end to end on tiny data: panoptic, semantic (each head), classification.

Each test builds, traces and trains a model through the whole trainer; all but the
tiny classification run take 20-90 s on the shared 2-core machine and are marked slow.
"""
import json
import os
import re

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

from deeplab_axial import config as config_lib
from deeplab_axial.data import datasets
from deeplab_axial.data import pipeline
from deeplab_axial.data import encoding
from deeplab_axial.data.converters import shapes
from deeplab_axial.models import builder
from deeplab_axial.training import experiment
from tests import helpers

_WIDTHS = {"res2": 8, "res3": 8, "res4": 16, "res5": 16}


@pytest.fixture
def tiny_backbone(monkeypatch):
  monkeypatch.setattr(
      builder, "build_backbone",
      lambda options, batch_norm_momentum=0.99, batch_norm_epsilon=1e-3: helpers.tiny_backbone(
          _WIDTHS, output_stride=options.output_stride,
          batch_norm=(batch_norm_momentum, batch_norm_epsilon)))


@pytest.fixture(scope="module")
def shapes_records(tmp_path_factory):
  directory = tmp_path_factory.mktemp("shapes")
  return shapes.ensure_shapes_tfrecords(str(directory), image_size=(33, 33), num_train=8,
                                        num_val=4)


_DECODER = """decoder { aspp_channels: 8 semantic_decoder_channels: 8
                        instance_decoder_channels: 8 semantic_low_level_projections: [4, 4]
                        instance_low_level_projections: [4, 4] }
              panoptic_head { semantic_head_channels: 8 center_head_channels: 4
                              offset_head_channels: 4 }"""


def _config(records, model, overrides=(), metrics="", loss="loss { semantic_top_k: 1.0 }"):
  text = f"""
      model {{ {model} }}
      dataset {{ name: "shapes" crop_size: [33, 33]
                 train_file_pattern: "{records['train']}"
                 eval_file_pattern: "{records['val']}" shuffle_buffer_size: 8 }}
      solver {{ optimizer: "adam" learning_rate: 0.001 schedule: "constant" }}
      {loss}
      train {{ batch_size: 2 steps: 2 steps_per_loop: 1 checkpoint_interval: 1
               summary_interval: 1 }}
      eval {{ interval: 2 batch_size: 2 crop_size: [33, 33] {metrics} }}"""
  return config_lib.parse_config(text, overrides=overrides)


def _panoptic_model():
  return f'meta_architecture: "panoptic_deeplab" backbone {{ name: "resnet50" }} {_DECODER}'


def _metrics_file(model_dir):
  with open(os.path.join(model_dir, experiment.METRICS_FILE)) as f:
    return json.load(f)


@pytest.mark.slow
def test_panoptic_train_and_eval_then_resume_eval_and_continuous_eval(
    tiny_backbone, shapes_records, tmp_path):
  del tiny_backbone
  config = _config(shapes_records, _panoptic_model())
  model_dir = str(tmp_path / "panoptic")
  results = experiment.run_experiment(config, "train_and_eval", model_dir)
  assert {"pq", "sq", "rq", "pq_th", "miou"} <= set(results)
  assert _metrics_file(model_dir) == {"2": results}
  assert tf.train.latest_checkpoint(model_dir).endswith("ckpt-2")
  # A finished run exits at once with the recorded metrics, without training more.
  assert experiment.run_experiment(config, "train_and_eval", model_dir) == results
  assert tf.train.latest_checkpoint(model_dir).endswith("ckpt-2")
  assert experiment.run_experiment(config, "eval", model_dir) == pytest.approx(results)
  assert experiment.run_experiment(config, "continuous_eval", model_dir) == pytest.approx(
      results)


@pytest.mark.slow
def test_eval_saves_official_predictions_at_original_size(tiny_backbone, shapes_records,
                                                          tmp_path):
  del tiny_backbone
  # Eval crop 49 > the 33x33 images: the written PNGs must be cropped back to 33x33.
  config = _config(shapes_records, _panoptic_model(), overrides=[
      "train.steps: 1", "eval.interval: 1", "eval.crop_size: [49, 49]",
      "eval.save_predictions: true"])
  model_dir = str(tmp_path / "model")
  experiment.run_experiment(config, "train_and_eval", model_dir)
  output_dir = os.path.join(model_dir, experiment.PREDICTIONS_DIR, "step_1")
  with open(os.path.join(output_dir, "panoptic.json")) as f:
    annotations = json.load(f)["annotations"]
  image_ids = [example["image_id"].numpy().decode() for example in map(
      pipeline.decode_example, tf.data.TFRecordDataset(tf.io.gfile.glob(
          shapes_records["val"])))]
  assert sorted(a["image_id"] for a in annotations) == sorted(int(i) for i in image_ids)
  official = set(datasets.get_dataset_info("shapes").official_category_ids)
  for annotation in annotations:
    ids = encoding.rgb_to_id(np.asarray(Image.open(
        os.path.join(output_dir, "panoptic", annotation["file_name"]))))
    assert ids.shape == (33, 33)
    segments = annotation["segments_info"]
    assert sorted(np.unique(ids[ids > 0])) == sorted(s["id"] for s in segments)
    assert all(s["category_id"] in official for s in segments)
    assert sum(s["area"] for s in segments) == int((ids > 0).sum())


def _one_sgd_step(records, model_dir, multiplier):
  """(backbone, head) weight changes of one plain-SGD training step."""
  config = _config(records, _panoptic_model(), overrides=[
      "solver.optimizer: 'sgd'", "solver.momentum: 0", "solver.learning_rate: 0.1",
      "train.steps: 1", f"solver.backbone_learning_rate_multiplier: {multiplier}"])
  run = experiment._Experiment(config, model_dir, tf.distribute.get_strategy(), None)  # pylint: disable=protected-access
  backbone = builder.find_backbone(run.model).trainable_variables
  backbone_ids = {id(v) for v in backbone}
  head = [v for v in run.model.trainable_variables if id(v) not in backbone_ids]
  before = [[v.numpy() for v in group] for group in (backbone, head)]
  run.run("train")
  return [np.concatenate([(v.numpy() - b).ravel() for v, b in zip(group, values)])
          for group, values in zip((backbone, head), before)]


@pytest.mark.slow
def test_backbone_learning_rate_multiplier_scales_only_backbone_updates(
    tiny_backbone, shapes_records, tmp_path):
  del tiny_backbone
  backbone_full, head_full = _one_sgd_step(shapes_records, str(tmp_path / "full"), 1.0)
  backbone_tenth, head_tenth = _one_sgd_step(shapes_records, str(tmp_path / "tenth"), 0.1)
  assert np.abs(backbone_full).max() > 1e-4 and np.abs(head_full).max() > 1e-4
  # atol: float32 rounding of (weight after − weight before) for weights of size ~1.
  np.testing.assert_allclose(backbone_tenth, 0.1 * backbone_full, rtol=1e-4, atol=3e-7)
  np.testing.assert_allclose(head_tenth, head_full, rtol=1e-4, atol=3e-7)


_SEMANTIC_HEADS = {
    "none": (16, _DECODER),
    "danet": (8, "context_head { type: 'danet' danet { inter_channels: 4 } }"),
    "isa": (8, "context_head { type: 'isa' isa { channels: 8 partition: [2, 2] } }"),
    "jpu": (32, "context_head { type: 'jpu' jpu { filters: 4 aspp_channels: 8 } }"),
    "gated_scnn": (16, "context_head { type: 'gated_scnn' gated_scnn { aspp_filters: 8 "
                       "decoder_filters: 8 low_level_filters: 4 "
                       "shape_stream_filters: [4, 4, 4] } }"),
}


@pytest.mark.slow
@pytest.mark.parametrize("head", sorted(_SEMANTIC_HEADS))
def test_semantic_train_and_eval_writes_miou(tiny_backbone, shapes_records, tmp_path, head):
  del tiny_backbone
  output_stride, body = _SEMANTIC_HEADS[head]
  model = (f'meta_architecture: "semantic" backbone {{ name: "resnet50" '
           f'output_stride: {output_stride} }} {body}')
  model_dir = str(tmp_path / head)
  results = experiment.run_experiment(_config(shapes_records, model), "train_and_eval",
                                      model_dir)
  assert 0.0 <= results["miou"] <= 1.0
  assert ("boundary_f_score" in results) == (head == "gated_scnn")
  assert _metrics_file(model_dir) == {"2": results}
  events = tf.io.gfile.glob(os.path.join(model_dir, "train", "events.*"))
  assert events


@pytest.mark.slow
def test_semantic_backbone_initialized_from_a_panoptic_checkpoint(
    tiny_backbone, shapes_records, tmp_path):
  """train.init_modules "backbone" restores only the backbone, across tasks."""
  del tiny_backbone
  source_dir = str(tmp_path / "source")
  experiment.run_experiment(_config(shapes_records, _panoptic_model()), "train", source_dir)
  source = tf.train.load_checkpoint(tf.train.latest_checkpoint(source_dir))
  model = 'meta_architecture: "semantic" backbone { name: "resnet50" } ' + _DECODER
  config = _config(shapes_records, model, overrides=[
      f'train.initial_checkpoint: "{source_dir}"', 'train.init_modules: ["backbone"]',
      "train.steps: 1"])
  run = experiment._Experiment(config, str(tmp_path / "target"),  # pylint: disable=protected-access
                               tf.distribute.get_strategy(), None)
  run.restore_for_training()
  backbone = builder.find_backbone(run.model)
  kernel = next(w for w in backbone.weights if "kernel" in w.name)
  stored = [name for name, _ in tf.train.list_variables(tf.train.latest_checkpoint(
      source_dir)) if name.startswith("backbone/") and "kernel" in name and "OPTIMIZER" not in
            name]
  assert any(np.array_equal(source.get_tensor(name), kernel.numpy()) for name in stored)
  # The decoder/head are not restored: no source tensor equals the new head's kernel.
  head = run.model.get_layer("semantic_head").weights[0].numpy()
  all_names = [name for name, _ in tf.train.list_variables(tf.train.latest_checkpoint(
      source_dir))]
  tensors = [source.get_tensor(name) for name in all_names]
  assert not any(np.shape(t) == head.shape and np.array_equal(t, head) for t in tensors)


def test_classification_train_and_eval_reports_top1_top5(tiny_backbone, tmp_path):
  del tiny_backbone
  records = helpers.tiny_imagenet_records(str(tmp_path))
  config = config_lib.parse_config(f"""
      model {{ meta_architecture: "classification" backbone {{ name: "resnet50" }}
               classifier_dropout: 0.1 }}
      dataset {{ name: "imagenet" crop_size: [16, 16]
                 train_file_pattern: "{records}/train-*"
                 eval_file_pattern: "{records}/val-*"
                 augmentation {{ random_resized_crop: true }} shuffle_buffer_size: 8 }}
      solver {{ optimizer: "sgd" learning_rate: 0.01 schedule: "constant" }}
      loss {{ label_smoothing: 0.1 }}
      train {{ batch_size: 4 steps: 2 steps_per_loop: 2 checkpoint_interval: 2 }}
      eval {{ interval: 2 batch_size: 4 resize_size: 18 }}""")
  model_dir = str(tmp_path / "model")
  results = experiment.run_experiment(config, "train_and_eval", model_dir)
  assert set(results) == {"top1", "top5", "num_images"} and results["num_images"] == 6
  assert 0.0 <= results["top1"] <= results["top5"] <= 1.0
  assert _metrics_file(model_dir) == {"2": results}


@pytest.mark.slow
def test_semantic_danet_on_resnet50(shapes_records, tmp_path):
  model = ('meta_architecture: "semantic" backbone { name: "resnet50" output_stride: 8 } '
           "context_head { type: 'danet' danet { inter_channels: 16 } }")
  results = experiment.run_experiment(_config(shapes_records, model), "train_and_eval",
                                      str(tmp_path / "danet"))
  assert 0.0 <= results["miou"] <= 1.0


@pytest.mark.slow
def test_semantic_segvit_on_vit_tiny(shapes_records, tmp_path):
  model = ('meta_architecture: "semantic" backbone { name: "vit_tiny" } '
           "context_head { type: 'segvit' segvit { shrunk: true atm_layers: 1 } }")
  # No loss section: SegViT trains with its ATM loss, and the config refuses one.
  config = _config(shapes_records, model, overrides=["dataset.crop_size: [32, 32]",
                                                     "eval.crop_size: [33, 33]"], loss="")
  results = experiment.run_experiment(config, "train_and_eval", str(tmp_path / "segvit"))
  assert 0.0 <= results["miou"] <= 1.0


@pytest.mark.slow
def test_classification_on_resnet50_from_the_imagenet_config(tmp_path):
  """The shipped ImageNet recipe runs with a ResNet-50 (config values overridden small)."""
  records = helpers.tiny_imagenet_records(str(tmp_path))
  path = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
      os.path.abspath(__file__)))), "configs", "imagenet", "axial_resnet_s_conv_stem.textproto")
  config = config_lib.load_config(path, [
      'model.backbone.name: "resnet50"', "model.backbone.output_stride: 32",
      "dataset.crop_size: [32, 32]", f'dataset.train_file_pattern: ["{records}/train-*"]',
      f'dataset.eval_file_pattern: ["{records}/val-*"]', "train.batch_size: 2",
      "train.steps: 2", "train.steps_per_loop: 1", "solver.warmup_steps: 1",
      "eval.batch_size: 2", "eval.resize_size: 36"])
  results = experiment.run_experiment(config, "train_and_eval", str(tmp_path / "model"))
  assert 0.0 <= results["top1"] <= results["top5"] <= 1.0


@pytest.mark.parametrize("override, field", [
    ("solver.optimizer: 'sgd'", "solver.optimizer was 'adam', now 'sgd'"),
    ("solver.lookahead { enable: true }", "solver.lookahead.enable was False, now True")])
def test_resuming_with_another_kind_of_optimizer_fails_naming_the_field(
    tiny_backbone, shapes_records, tmp_path, override, field):
  del tiny_backbone
  model_dir = str(tmp_path / "model")
  experiment.run_experiment(_config(shapes_records, _panoptic_model(), ["train.steps: 1"]),
                            "train", model_dir)
  changed = _config(shapes_records, _panoptic_model(), [override])
  with pytest.raises(ValueError, match=re.escape(field)) as error:
    experiment.run_experiment(changed, "train", model_dir)
  assert "train.initial_checkpoint: '" in str(error.value)
  # Evaluating reads no optimizer state: the model_dir still evaluates, and neither the
  # refused run nor the evaluation replaced the record of the training config.
  assert "pq" in experiment.run_experiment(changed, "eval", model_dir)
  with open(os.path.join(model_dir, experiment.CONFIG_FILE)) as f:
    assert config_lib.parse_config(f.read()).solver.optimizer == "adam"
