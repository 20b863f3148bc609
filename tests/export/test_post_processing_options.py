"""Evaluation and export resolve the same post-processing settings, for every config."""
import glob
import os

import pytest

from deeplab_axial import config as config_lib
from deeplab_axial import tasks
from deeplab_axial.data import datasets
from deeplab_axial.export import saved_model

_CONFIGS = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "..", "..", "configs",
                                         "**", "*.textproto"), recursive=True))
_PANOPTIC = [path for path in _CONFIGS
             if 'meta_architecture: "panoptic_deeplab"' in open(path, encoding="utf-8").read()]


def _evaluated_and_exported(config):
  info = datasets.get_dataset_info(config.dataset.name)
  evaluator = tasks.create_task(config, info).create_evaluator(model_fn=None)
  exported = saved_model.serving_options_from_config(config, info)
  return evaluator.post_processing, exported.post_processing


def test_every_panoptic_config_is_found():
  assert len(_PANOPTIC) >= 6  # shapes demo, COCO S/M/L, Cityscapes L/XL/ResNet, Mapillary


@pytest.mark.parametrize("path", _PANOPTIC, ids=lambda p: os.path.relpath(p, "configs"))
def test_eval_and_export_receive_identical_options(path):
  evaluated, exported = _evaluated_and_exported(config_lib.load_config(path))
  assert evaluated == exported
  assert type(evaluated) is tasks.PostProcessingOptions


def test_dataset_defaults_apply_only_where_the_config_is_silent():
  """COCO's descriptor says nms_kernel 41 and stuff_area 4096; a config that sets 7
  gets 7 for both eval and export, one that does not gets 41 for both (and so does an
  export from the dataset alone)."""
  path = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "coco",
                      "axial_deeplab_s.textproto")
  config = config_lib.load_config(path)
  assert config.eval.nms_kernel == 7
  assert {o.nms_kernel for o in _evaluated_and_exported(config)} == {7}
  config.eval.ClearField("nms_kernel")
  config.eval.stuff_area = 0
  for options in _evaluated_and_exported(config):
    assert (options.nms_kernel, options.stuff_area) == (41, 4096)
  coco = datasets.get_dataset_info("coco_panoptic")
  assert saved_model.serving_options(dataset_info=coco).post_processing == (
      _evaluated_and_exported(config)[0])
