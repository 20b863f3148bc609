"""The model catalogue: one set of presets and defaults for every entry point."""
import glob
import inspect
import json
import os
import re
import warnings

import pytest
import tf_keras

from deeplab_axial import config as config_lib
from deeplab_axial import models
from deeplab_axial.data import datasets
from deeplab_axial.models import builder
from deeplab_axial.models import catalogue
from deeplab_axial.protos import experiment_pb2

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_CONFIGS = sorted(glob.glob(os.path.join(_REPO, "configs", "*", "*.textproto")))
_TINY_WIDTH = 0.125


def _load(path):
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", config_lib.ConfigWarning)
    return config_lib.load_config(path)


def _architecture(model):
  """Layer configs and parameter count, independent of the Python object identities."""
  return (json.dumps(model.get_config(), sort_keys=True, default=str),
          model.count_params())


def _batch_norms(model):
  return {(m.momentum, m.epsilon) for m in model.submodules
          if isinstance(m, tf_keras.layers.BatchNormalization)}


@pytest.mark.parametrize("name", [
    "axial_resnet_s", "axial26s",
    pytest.param("axial_resnet_xl", marks=pytest.mark.slow),
    pytest.param("axial50m", marks=pytest.mark.slow)])
@pytest.mark.parametrize("span", [0, 5])
def test_python_api_and_config_builder_give_the_same_axial_resnet(name, span):
  options = experiment_pb2.BackboneOptions(name=name, span=span, stem="inception",
                                           output_stride=16, width_multiplier=_TINY_WIDTH)
  from_config = builder.build_backbone(options)
  from_python = models.axial_resnet(name, span=span or None, stem="inception",
                                    output_stride=16, width_multiplier=_TINY_WIDTH)
  assert _architecture(from_config) == _architecture(from_python)
  preset = catalogue.backbone(name)
  assert _batch_norms(from_python) == {(preset.batch_norm_momentum,
                                        preset.batch_norm_epsilon)}
  block = from_python.get_layer("res3_block1")
  assert block.stride_placement == ("after_width" if preset.layout == "official"
                                    else "per_axis")


def test_python_api_and_config_builder_give_the_same_resnet():
  options = experiment_pb2.BackboneOptions(name="resnet50", stem="conv", output_stride=16)
  from_python = models.resnet50(output_stride=16)
  assert _architecture(builder.build_backbone(options)) == _architecture(from_python)
  assert _batch_norms(from_python) == {(0.99, 1e-3)}


def test_config_batch_norm_defaults_come_from_the_preset_unless_set():
  text = """model {{ meta_architecture: "classification"
                     backbone {{ name: "axial26s" width_multiplier: 0.125 span: 3 }} {} }}
            dataset {{ name: "imagenet" crop_size: [33, 33] }}"""
  imagenet = datasets.get_dataset_info("imagenet")
  preset = builder.build_model(config_lib.parse_config(text.format("")), imagenet)
  assert _batch_norms(preset) == {(0.9, 1e-5)}  # PyTorch's, as models.axial_resnet
  configured = builder.build_model(config_lib.parse_config(
      text.format("batch_norm_momentum: 0.75 batch_norm_epsilon: 0.015625")), imagenet)
  assert _batch_norms(configured) == {(0.75, 0.015625)}


@pytest.mark.slow
def test_axial_deeplab_preset_equals_the_config_built_backbone():
  preset = catalogue.model("axial_deeplab_s")
  model = models.axial_deeplab("axial_deeplab_s", 3, width_multiplier=_TINY_WIDTH)
  options = experiment_pb2.BackboneOptions(
      name=preset.backbone, stem=preset.stem, span=preset.span,
      output_stride=preset.output_stride, width_multiplier=_TINY_WIDTH)
  assert (_architecture(builder.find_backbone(model))
          == _architecture(builder.build_backbone(options)))
  assert _batch_norms(model) == {(0.99, 1e-3)}
  assert model.get_layer("semantic_decoder").use_aspp is preset.use_aspp


def test_function_defaults_are_the_catalogue_defaults():
  deeplab = inspect.signature(models.axial_deeplab).parameters
  for preset in catalogue.MODELS.values():
    if preset.backbone in catalogue.names("axial_resnet"):
      assert deeplab["span"].default == preset.span
      assert deeplab["output_stride"].default == preset.output_stride
  resnet = inspect.signature(models.axial_resnet).parameters
  for name in catalogue.names("axial_resnet"):
    assert resnet["span"].default == catalogue.backbone(name).span
    assert resnet["stem"].default == catalogue.backbone(name).stem


def test_config_validation_reads_the_catalogue():
  assert config_lib.BACKBONES == tuple(catalogue.BACKBONES)
  assert set(catalogue.names("axial_resnet")) == {
      "axial_resnet_s", "axial_resnet_m", "axial_resnet_l", "axial_resnet_xl",
      "axial26s", "axial50s", "axial50m", "axial50l"}
  with pytest.raises(config_lib.ConfigError, match="axial_resnet_s.*vit_base"):
    config_lib.parse_config('model { backbone { name: "axial99" } } '
                            'dataset { name: "shapes" crop_size: [33, 33] }')


def test_official_layout_is_named_by_the_csrhddlam_presets_only():
  official = {name for name, preset in catalogue.BACKBONES.items()
              if preset.layout == "official"}
  assert official == {"axial26s", "axial50s", "axial50m", "axial50l"}


def test_longest_global_attention_axis_by_hand():
  # conv/inception stems: ceil(size / 4); the axial stem hands over at stride 2.
  assert catalogue.longest_global_attention_axis("conv", [(64, 50)]) == 16
  assert catalogue.longest_global_attention_axis("inception", [(1025, 2049)]) == 513
  assert catalogue.longest_global_attention_axis("axial", [(224, 224), (65, 511)]) == 256
  assert catalogue.global_span_problem("axial_resnet_l", "conv", 0,
                                       {"dataset.crop_size": (1020, 1020)}) is None
  problem = catalogue.global_span_problem("axial_resnet_l", "conv", 0,
                                          {"eval.crop_size": (1021, 64)})
  assert "eval.crop_size [1021, 64] gives 256-long" in problem
  assert catalogue.global_span_problem("axial_resnet_l", "conv", 65,
                                       {"eval.crop_size": (4097, 4097)}) is None
  assert catalogue.global_span_problem("resnet50", "conv", 0,
                                       {"eval.crop_size": (4097, 4097)}) is None


def test_global_span_beyond_its_tables_is_refused_at_load():
  with pytest.raises(config_lib.ConfigError,
                     match=r"model\.backbone\.span = 0.*eval\.crop_size \[1025, 2049\]"):
    config_lib.parse_config("""
        model { meta_architecture: "semantic"
                backbone { name: "axial_resnet_l" stem: "inception" span: 0
                           output_stride: 8 }
                context_head { type: "danet" } }
        dataset { name: "cityscapes_panoptic" crop_size: [769, 769] }
        eval { crop_size: [1025, 2049] }""")


def test_global_span_beyond_the_datasets_eval_crop_is_refused_at_build():
  # eval.crop_size empty: only the dataset descriptor knows the 1025x2049 eval crop.
  config = config_lib.parse_config("""
      model { backbone { name: "axial_resnet_s" stem: "inception" span: 0 } }
      dataset { name: "cityscapes_panoptic" crop_size: [769, 769] }""")
  with pytest.raises(ValueError, match="model.backbone.span.*cityscapes_panoptic eval crop"):
    builder.build_model(config, datasets.get_dataset_info("cityscapes_panoptic"))


@pytest.mark.parametrize("path", _CONFIGS, ids=lambda p: os.path.relpath(p, _REPO))
def test_every_shipped_config_fits_its_eval_crop(path):
  config = _load(path)
  info = datasets.get_dataset_info(config.dataset.name)
  sizes = builder.input_sizes(config, info)
  # The training crop and the evaluation crop at least; a classifier evaluates at its
  # training crop (resize, then centre crop), so it has the one size.
  classifier = config.model.meta_architecture == "classification"
  assert len(sizes) >= (1 if classifier else 2), sizes
  backbone = config.model.backbone
  assert catalogue.global_span_problem(backbone.name, backbone.stem, backbone.span,
                                       sizes) is None


_IMAGENET_REFERENCE = re.compile(r"configs/imagenet/[\w.-]+\.textproto")


def test_panoptic_configs_name_an_imagenet_config_with_their_backbone():
  named = 0
  for path in _CONFIGS:
    if "/imagenet/" in path:
      continue
    with open(path, encoding="utf-8") as f:
      comments = "".join(line for line in f if line.lstrip().startswith("#"))
    config = _load(path)
    for reference in _IMAGENET_REFERENCE.findall(comments):
      named += 1
      source = os.path.join(_REPO, reference)
      assert os.path.isfile(source), f"{path} names missing {reference}"
      imagenet = _load(source)
      assert imagenet.model.meta_architecture == "classification"
      for field in ("name", "stem", "width_multiplier", "num_heads"):
        assert (getattr(imagenet.model.backbone, field) ==
                getattr(config.model.backbone, field)), (path, reference, field)
    if config.model.backbone.name.startswith("axial_resnet"):
      assert _IMAGENET_REFERENCE.search(comments), f"{path} names no ImageNet config"
  assert named >= 8
