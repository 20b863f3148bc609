"""Experiment configs: every shipped config, overrides, defaults and each error path."""
import glob
import os
import warnings

import pytest

from deeplab_axial import config as config_lib

_CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           "configs")
_ALL_CONFIGS = sorted(glob.glob(os.path.join(_CONFIG_DIR, "**", "*.textproto"),
                                recursive=True))
_DEMO = os.path.join(_CONFIG_DIR, "shapes", "axial_deeplab_demo.textproto")

_MINIMAL = """
experiment_name: "tiny"
model {
  backbone { name: "axial_resnet_s" span: 0 }
}
dataset {
  name: "shapes"
  crop_size: [65, 65]
}
train { batch_size: 8 steps: 100 }
eval {
  crop_size: [65, 65]
}
"""


def _load(text=_MINIMAL, overrides=()):
  return config_lib.parse_config(text, source="tiny.textproto", overrides=overrides)


def _error(text=_MINIMAL, overrides=()):
  with pytest.raises(config_lib.ConfigError) as info:
    _load(text, overrides)
  return str(info.value)


@pytest.mark.parametrize("path", _ALL_CONFIGS, ids=lambda p: os.path.relpath(p, _CONFIG_DIR))
def test_every_shipped_config_loads_validates_and_round_trips(path):
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # shipped configs must not even warn
    config = config_lib.load_config(path)
  assert config.experiment_name and config.dataset.name
  assert config_lib.parse_config(config_lib.config_to_text(config)) == config


def test_the_expected_configs_exist():
  names = {os.path.relpath(p, _CONFIG_DIR) for p in _ALL_CONFIGS}
  expected = {"shapes/axial_deeplab_demo.textproto", "coco/axial_deeplab_s.textproto",
              "coco/axial_deeplab_m.textproto", "coco/axial_deeplab_l.textproto",
              "cityscapes/axial_deeplab_l.textproto", "cityscapes/axial_deeplab_xl.textproto",
              "cityscapes/panoptic_deeplab_resnet50.textproto",
              "mapillary/axial_deeplab_l.textproto",
              "imagenet/axial_resnet_s_conv_stem.textproto",
              "imagenet/axial_resnet_s_full.textproto",
              "imagenet/axial_resnet_l_conv_stem.textproto"}
  assert expected <= names


def test_cityscapes_config_follows_the_paper_recipe():
  # papers.md §4.2-4.3: batch 32, 60K steps, 1025x2049 crops, RAdam + Lookahead at 1e-3
  # with linear warm-up and poly decay, no ASPP, span 65, loss weights 1/200/0.01.
  config = config_lib.load_config(
      os.path.join(_CONFIG_DIR, "cityscapes", "axial_deeplab_l.textproto"))
  assert (config.train.batch_size, config.train.steps) == (32, 60000)
  assert list(config.dataset.crop_size) == [1025, 2049]
  solver = config.solver
  assert (solver.optimizer, solver.schedule, solver.warmup_type) == ("radam", "poly", "linear")
  assert solver.lookahead.enable and solver.warmup_steps > 0
  assert solver.learning_rate == pytest.approx(1e-3)
  assert solver.poly_power == pytest.approx(0.9)
  model = config.model
  assert (model.backbone.name, model.backbone.span, model.backbone.stem) == (
      "axial_resnet_l", 65, "inception")
  assert not model.decoder.use_aspp and model.backbone.output_stride == 16
  assert (config.loss.semantic_weight, config.loss.center_weight) == (1.0, 200.0)
  assert config.loss.offset_weight == pytest.approx(0.01)


def test_imagenet_configs_follow_the_paper_batch_sizes():
  conv = config_lib.load_config(
      os.path.join(_CONFIG_DIR, "imagenet", "axial_resnet_s_conv_stem.textproto"))
  full = config_lib.load_config(
      os.path.join(_CONFIG_DIR, "imagenet", "axial_resnet_s_full.textproto"))
  assert (conv.train.batch_size, full.train.batch_size) == (1024, 512)  # AD §4
  assert (conv.model.backbone.stem, conv.model.backbone.span) == ("conv", 0)
  assert (full.model.backbone.stem, full.model.backbone.span) == ("axial", 15)
  assert conv.solver.optimizer == "sgd" and conv.solver.nesterov
  assert conv.solver.schedule == "cosine"
  # Linear LR scaling with the batch (0.05 per 128 images).
  assert conv.solver.learning_rate == pytest.approx(2 * full.solver.learning_rate)
  assert list(conv.eval.metrics) == ["top1", "top5"]


def test_overrides_scalar_message_and_repeated_replace():
  config = config_lib.load_config(_DEMO, overrides=[
      "train.batch_size: 4",
      "solver.lookahead { enable: false sync_period: 3 }",
      "eval.scales: [0.5, 1.0]",
      "dataset { crop_size: [33, 33] }",   # a list inside a message body also replaces
      'train.initial_checkpoint: "/tmp/x"',
      "train.batch_size: 2",                # later overrides win
  ])
  assert config.train.batch_size == 2
  assert not config.solver.lookahead.enable and config.solver.lookahead.sync_period == 3
  assert config.solver.lookahead.slow_step_size == pytest.approx(0.5)  # merged, not reset
  assert list(config.eval.scales) == [0.5, 1.0]
  assert list(config.dataset.crop_size) == [33, 33]
  assert config.train.initial_checkpoint == "/tmp/x"
  assert config.solver.optimizer == "radam"  # untouched fields keep the file's values


def test_repeated_defaults_are_filled_in():
  config = _load()
  assert list(config.model.decoder.atrous_rates) == [6, 12, 18]
  assert list(config.model.decoder.semantic_low_level_projections) == [64, 32]
  assert list(config.model.decoder.instance_low_level_projections) == [32, 16]
  assert list(config.eval.scales) == [1.0]
  assert list(config.eval.metrics) == ["pq", "miou"]
  assert not config.model.context_head.HasField("jpu")  # only for the chosen head
  jpu = _load(overrides=['model { meta_architecture: "semantic" context_head { type: "jpu" } }'])
  assert list(jpu.model.context_head.jpu.dilation_rates) == [1, 2, 4, 8]
  assert list(jpu.eval.metrics) == ["miou"]


def test_unknown_field_names_file_line_column_and_valid_fields():
  message = _error(_MINIMAL.replace("batch_size: 8", "batch_sise: 8"))
  assert "tiny.textproto:10:" in message  # line 10, with the column
  assert "'batch_sise'" in message and "Did you mean 'batch_size'" in message
  assert "Valid fields: batch_size, steps" in message


def test_wrong_type_names_file_and_line():
  message = _error(_MINIMAL.replace("steps: 100", 'steps: "many"'))
  assert message.startswith("tiny.textproto:10:") and "integer" in message
  message = _error(_MINIMAL + "solver { optimizer: radam }")
  assert "quoted" in message


def test_invalid_choice_lists_allowed_values_and_line():
  message = _error(_MINIMAL + 'solver {\n  optimizer: "foo"\n}')
  assert "tiny.textproto:15: solver.optimizer = 'foo'" in message
  assert "'sgd', 'adam', 'adamw', 'radam'" in message


def test_every_problem_is_reported_together():
  text = _MINIMAL.replace("span: 0", "span: 64").replace('"shapes"', '""')
  message = _error(text, overrides=['train.mixed_precision: "float16"'])
  assert message.startswith("3 invalid config values")
  assert "model.backbone.span = 64" in message and "odd" in message
  assert "dataset.name = ''" in message
  assert "'float32', 'mixed_float16', 'mixed_bfloat16'" in message


def test_nested_field_location_distinguishes_same_named_fields():
  text = _MINIMAL.replace("eval {\n  crop_size: [65, 65]", "eval {\n  crop_size: [65]")
  message = _error(text)
  assert "tiny.textproto:12: eval.crop_size = [65]" in message  # not dataset.crop_size's line


def test_error_from_an_override_names_the_override():
  message = _error(overrides=["eval.nms_kernel: 4"])
  assert "--config_override 'eval.nms_kernel: 4'" in message and "odd" in message
  message = _error(overrides=["train.batch_sz: 3"])
  assert "--config_override 'train.batch_sz: 3'" in message and "batch_size" in message
  message = _error(overrides=["train batch_size 3"])
  assert "expected 'field.path: value'" in message


def test_crop_not_k_times_output_stride_plus_one_only_warns():
  with pytest.warns(config_lib.ConfigWarning, match=r"dataset.crop_size = \[64, 64\].*65"):
    config = _load(overrides=["dataset.crop_size: [64, 64]"])
  assert list(config.dataset.crop_size) == [64, 64]


def test_span_must_be_global_or_odd():
  assert _load(overrides=["model.backbone.span: 65"]).model.backbone.span == 65
  assert "positive odd span" in _error(overrides=["model.backbone.span: -1"])


def test_solver_cross_field_checks():
  message = _error(overrides=['solver.schedule: "step"', "solver.step_boundaries: [50, 20]",
                              "solver.step_learning_rates: [0.1]"])
  assert "increasing" in message and "one rate per boundary" in message
  assert "train.steps (100)" in _error(overrides=["solver.warmup_steps: 100"])
  assert "beta_2" in _error(overrides=['solver.optimizer: "radam"', "solver.beta_2: 0.5"])
  assert "needs train.initial_checkpoint" in _error(overrides=['train.init_modules: "backbone"'])
  assert "train.allow_partial_init" in _error(overrides=["train.allow_partial_init: true"])


def test_meta_architecture_and_head_combinations():
  message = _error(overrides=['model.context_head { type: "isa" }'])
  assert "meta_architecture 'semantic'" in message
  message = _error(overrides=['model.backbone.name: "vit_tiny"'])
  assert "segvit" in message
  message = _error(overrides=['eval.metrics: ["top1"]'])
  assert "'pq', 'miou', 'ap'" in message


def test_missing_file_raises_file_not_found(tmp_path):
  with pytest.raises(FileNotFoundError, match="nothing.textproto"):
    config_lib.load_config(str(tmp_path / "nothing.textproto"))


def test_resolve_file_pattern(tmp_path, monkeypatch):
  monkeypatch.setenv("DEEPLAB_AXIAL_DATA_DIR", "/data")
  assert config_lib.resolve_file_pattern("shapes/train-*") == "/data/shapes/train-*"
  assert config_lib.resolve_file_pattern("shapes/train-*", str(tmp_path)) == str(
      tmp_path / "shapes" / "train-*")
  monkeypatch.setenv("MY_ROOT", "/root/records")
  assert config_lib.resolve_file_pattern("${MY_ROOT}/x-*") == "/root/records/x-*"
  assert config_lib.resolve_file_pattern("gs://bucket/x-*") == "gs://bucket/x-*"
  with pytest.raises(ValueError, match="NOT_SET_ANYWHERE"):
    config_lib.resolve_file_pattern("${NOT_SET_ANYWHERE}/x")


def test_saving_predictions_needs_a_panoptic_model():
  config = config_lib.load_config(_DEMO, overrides=["eval.save_predictions: true"])
  assert config.eval.save_predictions
  semantic = os.path.join(_CONFIG_DIR, "cityscapes", "danet_resnet101.textproto")
  with pytest.raises(config_lib.ConfigError,
                     match=r"eval\.save_predictions.*meta_architecture 'panoptic_deeplab'"):
    config_lib.load_config(semantic, overrides=["eval.save_predictions: true"])


def test_backbone_learning_rate_multiplier_must_be_positive():
  config = config_lib.load_config(_DEMO,
                                  overrides=["solver.backbone_learning_rate_multiplier: 0.1"])
  assert config.solver.backbone_learning_rate_multiplier == pytest.approx(0.1)
  with pytest.raises(config_lib.ConfigError,
                     match=r"backbone_learning_rate_multiplier.*must be > 0"):
    config_lib.load_config(_DEMO, overrides=["solver.backbone_learning_rate_multiplier: 0"])


_IMAGENET = os.path.join(_CONFIG_DIR, "imagenet", "axial_resnet_s_inception_stem.textproto")


@pytest.mark.parametrize("override, reason", [
    ("dataset.resize_long_side: 512", "resize_long_side is for segmentation"),
    ("dataset.augmentation.photometric: true", "no photometric jitter"),
    ("dataset.augmentation.contrast_max_factor: 1.2", "no photometric jitter"),
    ("dataset.augmentation.min_scale_factor: 0.8", "not random scaling"),
    ("dataset.targets.sigma: 4", "classification has none"),
    ("export.version: 2", "implemented for meta_architecture 'panoptic_deeplab' only"),
])
def test_classification_refuses_settings_it_never_reads(override, reason):
  with pytest.raises(config_lib.ConfigError) as info:
    config_lib.load_config(_IMAGENET, [override])
  field = override.split(":")[0]
  assert f"--config_override {override!r}: {field} = " in str(info.value)
  assert reason in str(info.value)


def test_jitter_ranges_need_photometric():
  message = _error(overrides=["dataset.augmentation.hue_max_delta: 0.2"])
  assert "dataset.augmentation.hue_max_delta = " in message
  assert "used only with dataset.augmentation.photometric: true" in message
  _load(overrides=["dataset.augmentation { photometric: true hue_max_delta: 0.2 }"])


@pytest.mark.parametrize("config, override, reason", [
    ("segvit_demo", "loss.semantic_top_k: 0.2", "SegViT trains with its ATM loss"),
    ("danet_demo", "loss.center_weight: 100", "not a term of the semantic loss"),
    ("axial_deeplab_demo", "loss.label_smoothing: 0.1", "not a term of the panoptic_deeplab"),
])
def test_loss_terms_the_task_does_not_have_are_refused(config, override, reason):
  with pytest.raises(config_lib.ConfigError, match=reason):
    config_lib.load_config(os.path.join(_CONFIG_DIR, "shapes", f"{config}.textproto"),
                           [override])
