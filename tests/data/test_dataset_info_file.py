"""`dataset.dataset_info_file`: a custom 3-class COCO-format dataset, converted, then
read from a config (descriptor, input pipeline) and, slow, trained and evaluated."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.data import data_fixtures
from deeplab_axial import config as config_lib
from deeplab_axial.data import datasets
from deeplab_axial.data import pipeline
from deeplab_axial.data.converters import coco

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# The custom dataset, stated independently of the converter: categories sorted by id give
# contiguous ids ground 0, sky 1, kite 2 (the only thing class).
CATEGORIES = ({"id": 3, "name": "ground", "isthing": 0},
              {"id": 7, "name": "sky", "isthing": 0},
              {"id": 9, "name": "kite", "isthing": 1})
LABEL_DIVISOR = 256
FIXTURE_INFO = datasets.DatasetInfo(
    name="toy_kites", num_classes=3, ignore_label=255, label_divisor=LABEL_DIVISOR,
    thing_class_ids=(2,), class_names=("ground", "sky", "kite"),
    colormap=np.zeros((3, 3), np.uint8), official_category_ids=(3, 7, 9))


@pytest.fixture(scope="module", name="converted")
def fixture_converted(tmp_path_factory):
  """data_dir/kites/{train,val}-*.tfrecord + dataset_info.json; returns (data_dir, truth)."""
  root = str(tmp_path_factory.mktemp("kites_raw"))
  data_dir = str(tmp_path_factory.mktemp("data_dir"))
  truth = {}
  for split, count, seed in (("train", 3, 0), ("val", 2, 1)):
    truth[split] = data_fixtures.make_coco(root, split, num_images=count, size=(64, 64),
                                           seed=seed, image_format="png",
                                           info=FIXTURE_INFO)
  output_dir = os.path.join(data_dir, "kites")
  # Train through the CLI (the documented route), val through the package function.
  subprocess.run(
      [sys.executable, os.path.join(REPO, "data", "build_coco_data.py"),
       f"--input_dir={root}", f"--output_dir={output_dir}", "--split=train",
       "--dataset_name=toy_kites", f"--label_divisor={LABEL_DIVISOR}", "--num_shards=1"],
      check=True, env=dict(os.environ, PYTHONPATH=REPO), capture_output=True)
  info = coco.custom_dataset_info(root, "val", "toy_kites", label_divisor=LABEL_DIVISOR)
  coco.convert_coco(root, output_dir, "val", num_shards=1, dataset_info=info,
                    show_progress=False)
  return data_dir, truth


def _config(dataset_fields="", other_fields="", overrides=()):
  text = f"""
      dataset {{ dataset_info_file: "kites/dataset_info.json"
                 train_file_pattern: "kites/train-*-of-*.tfrecord"
                 eval_file_pattern: "kites/val-*-of-*.tfrecord"
                 crop_size: [65, 65] shuffle_buffer_size: 4 {dataset_fields} }}
      eval {{ crop_size: [65, 65] interval: 2 batch_size: 1 }}
      {other_fields}"""
  return config_lib.parse_config(text, overrides=overrides)


def test_config_reads_the_converted_descriptor(converted):
  data_dir, _ = converted
  info = datasets.dataset_info_from_config(_config().dataset, data_dir)
  assert (info.name, info.num_classes, info.label_divisor) == ("toy_kites", 3, LABEL_DIVISOR)
  assert info.class_names == ("ground", "sky", "kite")
  assert info.thing_class_ids == (2,) and info.official_category_ids == (3, 7, 9)


def test_pipeline_batches_from_the_config(converted):
  data_dir, truth = converted
  config = _config()
  info = datasets.dataset_info_from_config(config.dataset, data_dir)
  pattern = config_lib.resolve_file_pattern(config.dataset.train_file_pattern[0], data_dir)
  train = pipeline.build_panoptic_dataset(
      pattern, info, is_training=True, batch_size=2, seed=0,
      **pipeline.panoptic_options_from_config(config.dataset, is_training=True))
  batch = next(iter(train))
  assert batch["image"].shape == (2, 65, 65, 3)
  assert batch["center_heatmap"].shape == (2, 65, 65, 1)
  classes = set(np.unique(batch["panoptic"].numpy() // LABEL_DIVISOR).tolist())
  assert classes <= {0, 1, 2, 255} and classes & {0, 1, 2}
  eval_pattern = config_lib.resolve_file_pattern(config.dataset.eval_file_pattern[0],
                                                 data_dir)
  evaluation = pipeline.build_panoptic_dataset(eval_pattern, info, is_training=False,
                                               batch_size=1, crop_size=(65, 65),
                                               generate_targets=False)
  for batch in evaluation:
    image_id = batch["image_id"][0].numpy().decode()
    np.testing.assert_array_equal(batch["panoptic"][0, :64, :64].numpy(),
                                  truth["val"][image_id])


def test_name_may_be_empty_or_must_match(converted):
  data_dir, _ = converted
  config = _config('name: "toy_kites"')
  assert datasets.dataset_info_from_config(config.dataset, data_dir).name == "toy_kites"
  with pytest.raises(ValueError, match="dataset.name = 'coco_panoptic' differs"):
    datasets.dataset_info_from_config(_config('name: "coco_panoptic"').dataset, data_dir)


def test_missing_file_names_the_field_and_path(tmp_path):
  with pytest.raises(FileNotFoundError) as error:
    datasets.dataset_info_from_config(_config().dataset, str(tmp_path))
  message = str(error.value)
  assert "dataset.dataset_info_file" in message
  assert os.path.join(str(tmp_path), "kites", "dataset_info.json") in message


@pytest.mark.parametrize("content, problem", [
    ("{not json", "not valid JSON"),
    (json.dumps({"name": "x"}), "missing fields"),
    (json.dumps(dict(datasets.get_dataset_info("shapes").to_json(), colour=1)),
     "unknown fields \\['colour'\\]"),
    (json.dumps(dict(datasets.get_dataset_info("shapes").to_json(), num_classes=2)),
     "invalid DatasetInfo"),
])
def test_invalid_file_names_the_field_path_and_problem(tmp_path, content, problem):
  (tmp_path / "kites").mkdir()
  (tmp_path / "kites" / "dataset_info.json").write_text(content)
  with pytest.raises(ValueError, match=problem) as error:
    datasets.dataset_info_from_config(_config().dataset, str(tmp_path))
  assert "dataset.dataset_info_file = 'kites/dataset_info.json'" in str(error.value)
  assert str(tmp_path / "kites" / "dataset_info.json") in str(error.value)


def test_config_needs_a_name_or_a_file():
  with pytest.raises(config_lib.ConfigError, match="dataset_info_file"):
    config_lib.parse_config('dataset { crop_size: [33, 33] }')


def test_shipped_mapillary_config_trains_v2_from_its_dataset_info(tmp_path):
  """The overrides documented in configs/mapillary give the v2.0 classes and pipeline."""
  from deeplab_axial.data.converters import mapillary  # pylint: disable=import-outside-toplevel
  categories = [{"id": i, "name": f"class{i}", "isthing": int(i % 3 == 0)}
                for i in range(1, 11)]
  data_fixtures.make_vistas(str(tmp_path / "raw"), version="v2.0", split="training",
                            size=(40, 50), categories=categories)
  mapillary.convert_mapillary(str(tmp_path / "raw"), str(tmp_path / "mapillary_v2"),
                              "training", version="v2.0", num_shards=1, show_progress=False)
  config = config_lib.load_config(
      os.path.join(REPO, "configs", "mapillary", "axial_deeplab_l.textproto"), overrides=[
          'dataset.name: "mapillary_vistas_v2"',
          'dataset.dataset_info_file: "mapillary_v2/dataset_info.json"',
          'dataset.train_file_pattern: ["mapillary_v2/training-*.tfrecord"]',
          "dataset.crop_size: [33, 33]", "dataset.resize_long_side: 32"])
  info = datasets.dataset_info_from_config(config.dataset, str(tmp_path))
  assert (info.name, info.num_classes) == ("mapillary_vistas_v2", 10)
  assert info.thing_class_ids == (2, 5, 8)  # ids 3, 6, 9 at contiguous 2, 5, 8
  pattern = config_lib.resolve_file_pattern(config.dataset.train_file_pattern[0],
                                            str(tmp_path))
  batch = next(iter(pipeline.build_panoptic_dataset(
      pattern, info, is_training=True, batch_size=2, seed=0,
      **pipeline.panoptic_options_from_config(config.dataset, is_training=True))))
  assert batch["image"].shape == (2, 33, 33, 3)


@pytest.mark.slow
def test_trains_two_steps_and_evaluates_from_the_file(converted, tmp_path, monkeypatch):
  # pylint: disable=import-outside-toplevel
  from deeplab_axial.models import builder
  from deeplab_axial.training import experiment
  from tests import helpers
  monkeypatch.setattr(
      builder, "build_backbone",
      lambda options, **unused_batch_norm: helpers.tiny_backbone(
          {"res2": 8, "res3": 8, "res4": 16, "res5": 16}, output_stride=options.output_stride))
  data_dir, _ = converted
  tiny_model = """
      model { backbone { name: "resnet50" }
              decoder { aspp_channels: 8 semantic_decoder_channels: 8
                        instance_decoder_channels: 8 semantic_low_level_projections: [4, 4]
                        instance_low_level_projections: [4, 4] }
              panoptic_head { semantic_head_channels: 8 center_head_channels: 4
                              offset_head_channels: 4 } }
      solver { optimizer: "adam" schedule: "constant" }
      train { batch_size: 2 steps: 2 steps_per_loop: 1 checkpoint_interval: 2
              summary_interval: 1 }"""
  config = _config("augmentation { photometric: true }", tiny_model)
  results = experiment.run_experiment(config, "train_and_eval", str(tmp_path / "model"),
                                      data_dir=data_dir)
  assert 0.0 <= results["pq"] <= 1.0 and 0.0 <= results["miou"] <= 1.0
  with open(tmp_path / "model" / experiment.METRICS_FILE) as f:
    assert list(json.load(f)) == ["2"]
