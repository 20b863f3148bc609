"""The shipped pretrain -> fine-tune chain at S width: ImageNet S (inception stem, global
attention) trained one step on converted ImageNet-layout records, then the COCO S config
(span 65) initialised from it through the trainer's initialisation path.

Only the CPU cost is reduced, identically for both configs (`_SHRINK`: batch, steps, crop);
architecture, stem, width and spans are the shipped ones. Expected values come from the
ImageNet checkpoint read with `tf.train.load_checkpoint` and, for the relative-position
tables, its central rows sliced here (global 2L - 1 rows -> span 65 rows), not from the
adaptation code.
"""
import logging
import os
import re

import numpy as np
import pytest
import tensorflow as tf

from deeplab_axial import config as config_lib
from deeplab_axial.data import datasets
from deeplab_axial.data.converters import coco
from deeplab_axial.data.converters import imagenet
from deeplab_axial.models import builder
from deeplab_axial.training import experiment
from tests.data import data_fixtures as fixtures

IMAGENET_CONFIG = "configs/imagenet/axial_resnet_s_inception_stem.textproto"
COCO_CONFIG = "configs/coco/axial_deeplab_s.textproto"
_SHRINK = ("train.batch_size: 2", "train.steps: 1", "train.steps_per_loop: 1",
           "solver.warmup_steps: 0", "dataset.crop_size: [33, 33]",
           "dataset.shuffle_buffer_size: 4")
_TABLE = "relative_embeddings"


def _repo_path(relative):
  return os.path.join(os.path.dirname(__file__), "..", "..", relative)


def _imagenet_checkpoint(tmp_path):
  """Converts an ImageNet-layout fixture and trains the ImageNet S config one step."""
  synsets = datasets.imagenet_synsets()
  fixtures.make_imagenet(str(tmp_path / "imagenet_raw"), [synsets[0], synsets[7]],
                         size=(40, 48))
  imagenet.convert_imagenet(str(tmp_path / "imagenet_raw"), str(tmp_path / "data/imagenet"),
                            "train", num_shards=1, show_progress=False)
  config = config_lib.load_config(_repo_path(IMAGENET_CONFIG), _SHRINK)
  model_dir = str(tmp_path / "imagenet_run")
  experiment.run_experiment(config, "train", model_dir, data_dir=str(tmp_path / "data"))
  return tf.train.latest_checkpoint(model_dir)


def _checkpoint_backbone_values(prefix):
  """{variable path under the `backbone` item: value} read straight from the file."""
  reader = tf.train.load_checkpoint(prefix)
  suffix = "/.ATTRIBUTES/VARIABLE_VALUE"
  return {key[len("backbone/"):-len(suffix)]: reader.get_tensor(key)
          for key in reader.get_variable_to_shape_map()
          if key.startswith("backbone/") and key.endswith(suffix)}


def _central_rows(table, rows):
  start = (table.shape[0] - rows) // 2
  return table[start:start + rows]


@pytest.mark.slow
def test_imagenet_s_initialises_every_coco_s_backbone_tensor(tmp_path, caplog):
  prefix = _imagenet_checkpoint(tmp_path)
  source = _checkpoint_backbone_values(prefix)

  fixtures.make_coco(str(tmp_path / "coco_raw"), split="train", num_images=2, size=(40, 48))
  coco.convert_coco(str(tmp_path / "coco_raw"), str(tmp_path / "data/coco"), "train",
                    num_shards=1, num_workers=1, show_progress=False)
  config = config_lib.load_config(_repo_path(COCO_CONFIG), _SHRINK + (
      f'train.initial_checkpoint: "{prefix}"', 'train.init_modules: "backbone"'))
  # absl's own logger level is set by any earlier test or CLI that parsed absl flags.
  with caplog.at_level(logging.INFO), caplog.at_level(logging.INFO, logger="absl"):
    # pylint: disable-next=protected-access
    run = experiment._Experiment(config, str(tmp_path / "coco_run"),
                                 tf.distribute.get_strategy(), str(tmp_path / "data"))
    run.restore_for_training()

  report = re.search(r"initial checkpoint: restored (\d+)/(\d+) variables of backbone",
                     caplog.text)
  assert report, caplog.text
  restored, total = int(report.group(1)), int(report.group(2))
  backbone = builder.find_backbone(run.model)
  assert restored == total == len(backbone.variables) == len(source)

  # Pair the ImageNet run's backbone variables with the checkpoint keys through TF's own
  # object-graph restore (not deeplab_axial.checkpoints), then compare with the COCO model.
  imagenet_config = config_lib.load_config(_repo_path(IMAGENET_CONFIG), _SHRINK)
  imagenet_backbone = builder.find_backbone(builder.build_model(
      imagenet_config, datasets.get_dataset_info("imagenet")))
  tf.train.Checkpoint(backbone=imagenet_backbone).restore(prefix).expect_partial()
  assert len(imagenet_backbone.variables) == len(backbone.variables)
  source_values = list(source.values())
  adapted_tables = 0
  for pretrained, fine_tuned in zip(imagenet_backbone.variables, backbone.variables):
    assert pretrained.name.split("/", 1)[1] == fine_tuned.name.split("/", 1)[1]
    expected = pretrained.numpy()
    assert any(expected.shape == v.shape and np.array_equal(expected, v)
               for v in source_values), f"{pretrained.name} is not a checkpoint tensor"
    if _TABLE in fine_tuned.name:
      assert expected.shape[0] > fine_tuned.shape[0] == 65, fine_tuned.name
      expected = _central_rows(expected, 65)
      adapted_tables += 1
    np.testing.assert_array_equal(fine_tuned.numpy(), expected, err_msg=fine_tuned.name)
  assert adapted_tables > 0
