"""Every field a shipped config sets is read by what train, eval and export build."""
import glob
import os

from absl import logging
import pytest

from deeplab_axial import config as config_lib
from deeplab_axial import config_usage
from deeplab_axial.training import config_check

_ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
SHIPPED = sorted(os.path.relpath(path, _ROOT) for path in
                 glob.glob(os.path.join(_ROOT, "configs", "**", "*.textproto"), recursive=True))
DEMO_CONFIG = "configs/shapes/axial_deeplab_demo.textproto"
SEMANTIC_DEMO_CONFIG = "configs/shapes/danet_demo.textproto"


def _load(relative, overrides=()):
  return config_lib.load_config(os.path.join(_ROOT, relative), overrides)


def test_the_demo_config_is_read_entirely(tmp_path):
  config = _load(DEMO_CONFIG)
  tracker = config_check.read_like_a_run(config, data_dir=str(tmp_path))
  assert config_usage.set_but_unread(config, tracker) == []
  # Spot checks that the reads come from the real consumers.
  assert {"model.backbone.span", "dataset.targets.sigma", "solver.learning_rate",
          "train.steps_per_loop", "eval.interval", "eval.nms_kernel",
          "export.version"} <= tracker.read_paths


def test_a_target_setting_of_a_semantic_model_is_named(tmp_path):
  # Semantic segmentation makes no centre heatmap: nothing reads the Gaussian's sigma.
  config = _load(SEMANTIC_DEMO_CONFIG, ["dataset.targets.sigma: 4"])
  with pytest.raises(config_usage.UnreadConfigError,
                     match=r"^config field dataset\.targets\.sigma is set but nothing in "
                           r"mode 'train_and_eval \+ export' reads it for meta_architecture "
                           r"'semantic'; remove it$"):
    config_check.check_config_is_read(config, data_dir=str(tmp_path))


# Every shipped config at full size: with the full rehearsal, on demand (README); CI
# checks the shapes demos and the ImageNet S config through tests/training/test_rehearsal.py.
@pytest.mark.full_rehearsal
@pytest.mark.parametrize("path", SHIPPED)
def test_every_shipped_config_is_read_entirely(path, tmp_path):
  logging.set_verbosity(logging.WARNING)
  config_check.check_config_is_read(_load(path), data_dir=str(tmp_path))
