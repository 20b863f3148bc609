"""builder.build_model: every meta-architecture and context head from a config."""
import os

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from deeplab_axial import config as config_lib
from deeplab_axial.data import datasets
from deeplab_axial.models import builder
from tests import helpers

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_SHAPES = datasets.get_dataset_info("shapes")
_WIDTHS = {"res2": 8, "res3": 12, "res4": 16, "res5": 32}


@pytest.fixture
def tiny_backbone(monkeypatch):
  monkeypatch.setattr(
      builder, "build_backbone",
      lambda options, **unused_batch_norm: helpers.tiny_backbone(
          _WIDTHS, output_stride=options.output_stride))


def _semantic_config(head, output_stride=16, body="", extra=""):
  return config_lib.parse_config(f"""
      model {{ meta_architecture: "semantic"
               backbone {{ name: "resnet50" output_stride: {output_stride} }}
               context_head {{ type: "{head}" {body} }} {extra} }}
      dataset {{ name: "shapes" crop_size: [33, 33] }}""")


_HEADS = {
    "none": (16, "", "decoder { aspp_channels: 8 semantic_decoder_channels: 8 "
                     "semantic_low_level_projections: [4, 4] } "
                     "panoptic_head { semantic_head_channels: 8 }", ()),
    "danet": (8, "danet { inter_channels: 8 }", "", ("position_logits", "channel_logits")),
    "isa": (8, "isa { channels: 8 partition: [2, 2] key_channels: 4 }", "", ()),
    "jpu": (32, "jpu { filters: 4 aspp_channels: 8 }", "", ()),
    "gated_scnn": (16, "gated_scnn { aspp_filters: 8 decoder_filters: 8 low_level_filters: 4 "
                       "shape_stream_filters: [4, 4, 4] }", "", ("boundary_logits",)),
}


@pytest.mark.parametrize("head", sorted(_HEADS))
def test_semantic_heads_give_logits_at_input_size(tiny_backbone, head):
  del tiny_backbone
  output_stride, body, extra, auxiliary = _HEADS[head]
  model = builder.build_model(_semantic_config(head, output_stride, body, extra), _SHAPES)
  outputs = model(tf.random.uniform([2, 33, 41, 3], 0, 255))
  assert set(outputs) == {"semantic_logits", *auxiliary}
  assert outputs["semantic_logits"].shape == (2, 33, 41, _SHAPES.num_classes)
  assert outputs["semantic_logits"].dtype == tf.float32
  if "boundary_logits" in auxiliary:
    assert outputs["boundary_logits"].shape == (2, 33, 41, 1)
  assert builder.find_backbone(model).name == "tiny_backbone"


def test_danet_head_parameter_count_matches_official_layout(tiny_backbone):
  """DANetHead of the official code: conv5a/c, PAM (q, k, v, gamma), CAM (gamma),
  conv51/52 (3x3 conv + BN) and three 1x1 classifiers with bias."""
  del tiny_backbone
  model = builder.build_model(_semantic_config("danet", 8, "danet { inter_channels: 8 }"),
                              _SHAPES)
  head = model.get_layer("danet_head")
  c, i, k, classes = _WIDTHS["res5"], 8, 8 // 8, _SHAPES.num_classes
  conv_bn = lambda c_in, c_out: 9 * c_in * c_out + 2 * c_out  # no bias; BN gamma, beta
  expected = (2 * conv_bn(c, i) + 2 * (i * k + k) + (i * i + i) + 1 + 1 + 2 * conv_bn(i, i) +
              3 * (i * classes + classes))
  trainable = sum(int(np.prod(w.shape)) for w in head.trainable_weights)
  assert trainable == expected


def test_semantic_deeplab_uses_the_configured_decoder(tiny_backbone):
  del tiny_backbone
  config = _semantic_config("none", 16, "", _HEADS["none"][2])
  model = builder.build_model(config, _SHAPES)
  assert model.get_layer("semantic_decoder").decoder_channels == 8
  assert [layer.name for layer in model.layers if "instance" in layer.name] == []


def test_classifier_logits_and_dropout(tiny_backbone):
  del tiny_backbone
  imagenet = datasets.get_dataset_info("imagenet")
  config = config_lib.parse_config("""
      model { meta_architecture: "classification" backbone { name: "resnet50" }
              classifier_dropout: 0.2 }
      dataset { name: "imagenet" crop_size: [32, 32] }""")
  model = builder.build_model(config, imagenet)
  logits = model(tf.zeros([3, 32, 32, 3]))
  assert logits.shape == (3, 1000) and logits.dtype == tf.float32
  assert model.get_layer("dropout").rate == pytest.approx(0.2)
  assert builder.find_backbone(model).name == "tiny_backbone"
  # GAP(res5) -> dense: the classifier has res5 channels x classes + classes weights.
  assert model.get_layer("logits").count_params() == _WIDTHS["res5"] * 1000 + 1000


def test_task_and_dataset_mismatch_is_rejected():
  config = config_lib.parse_config("""
      model { meta_architecture: "classification" backbone { name: "resnet50" } }
      dataset { name: "shapes" crop_size: [32, 32] }""")
  with pytest.raises(ValueError, match="classification dataset.*'shapes'"):
    builder.build_model(config, _SHAPES)


def test_vit_backbone_outside_segvit_is_rejected():
  options = config_lib.experiment_pb2.BackboneOptions(name="vit_tiny")
  with pytest.raises(ValueError, match="model.backbone.name 'vit_tiny'.*segvit"):
    builder.build_backbone(options)


def test_resnet50_panoptic_baseline_with_separable_aspp_has_the_papers_size():
  """AD Tab. 6: 'ResNet-50 (their impl.) + ASPP' has 30.0M parameters (19 classes)."""
  path = os.path.join(_REPO, "configs", "cityscapes", "panoptic_deeplab_resnet50.textproto")
  config = config_lib.load_config(path, ["model.decoder.aspp_use_separable_conv: true"])
  cityscapes = datasets.get_dataset_info("cityscapes_panoptic")
  model = builder.build_model(config, cityscapes)
  assert abs(model.count_params() - 30.0e6) < 0.15e6
  assert builder.find_backbone(model).name == "resnet50"


@pytest.mark.slow
def test_danet_on_resnet50_runs_at_output_stride_8():
  config = _semantic_config("danet", 8, "danet { inter_channels: 16 }")
  model = builder.build_model(config, _SHAPES)
  backbone = builder.find_backbone(model)
  assert backbone.name == "resnet50"
  endpoints = backbone(tf.zeros([1, 33, 33, 3]))
  assert endpoints["res5"].shape == (1, 5, 5, 2048)  # ceil(33 / 8)
  assert model(tf.zeros([1, 33, 33, 3]))["semantic_logits"].shape == (1, 33, 33, 6)


@pytest.mark.slow
def test_jpu_on_resnet50_keeps_the_backbone_at_output_stride_32():
  config = _semantic_config("jpu", 32, "jpu { filters: 8 aspp_channels: 8 }")
  model = builder.build_model(config, _SHAPES)
  endpoints = builder.find_backbone(model)(tf.zeros([1, 65, 65, 3]))
  assert endpoints["res5"].shape == (1, 3, 3, 2048)
  head = model.get_layer("jpu_aspp_head")
  assert head.get_layer("jpu").filters == 8


@pytest.mark.slow
def test_segvit_position_grid_follows_the_training_crop():
  config = config_lib.parse_config("""
      model { meta_architecture: "semantic" backbone { name: "vit_tiny" }
              context_head { type: "segvit" segvit { shrunk: true atm_layers: 1 } } }
      dataset { name: "shapes" crop_size: [48, 64] }""")
  model = builder.build_model(config, _SHAPES)
  vit = builder.find_backbone(model)
  assert vit.name == "backbone" and tuple(vit.position_grid_size) == (3, 4)
  outputs = model(tf.zeros([1, 48, 64, 3]))
  assert outputs["semantic_logits"].shape == (1, 48, 64, 6)
  assert outputs["class_logits"].shape[-2:] == (6, 7)


@pytest.mark.slow
def test_axial_backbone_semantic_model():
  config = config_lib.parse_config("""
      model { meta_architecture: "semantic"
              backbone { name: "axial26s" width_multiplier: 0.125 output_stride: 16 }
              context_head { type: "isa" isa { channels: 8 partition: [2, 2] } } }
      dataset { name: "shapes" crop_size: [33, 33] }""")
  model = builder.build_model(config, _SHAPES)
  assert model(tf.zeros([1, 33, 33, 3]))["semantic_logits"].shape == (1, 33, 33, 6)
  assert builder.find_backbone(model) is not None


@pytest.mark.parametrize("head", ["danet", "isa", "jpu", "gated_scnn"])
def test_heads_use_the_configured_batch_norm_and_dropout(tiny_backbone, head):
  del tiny_backbone
  output_stride, body, extra, _ = _HEADS[head]
  config = _semantic_config(head, output_stride, f"dropout: 0.35 {body}",
                            f"{extra} batch_norm_momentum: 0.77 batch_norm_epsilon: 0.0021")
  model = builder.build_model(config, _SHAPES)
  norms = [m for m in model.submodules if isinstance(m, tf_keras.layers.BatchNormalization)]
  dropouts = [m for m in model.submodules if isinstance(m, tf_keras.layers.Dropout)]
  assert norms and dropouts
  assert [(n.momentum, n.epsilon) for n in norms] == [
      (pytest.approx(0.77), pytest.approx(0.0021))] * len(norms)
  assert [d.rate for d in dropouts] == [pytest.approx(0.35)] * len(dropouts)
