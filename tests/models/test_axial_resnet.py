"""Axial-ResNet backbones: official parameter counts, endpoints, strides, stems, saving."""
import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from deeplab_axial.layers.axial_blocks import AxialBlock
from deeplab_axial.models.backbones.axial_resnet import STEM_SPAN
from deeplab_axial.models.backbones.axial_resnet import axial_resnet
from deeplab_axial.models.backbones.axial_resnet import axial_resnet_from_options
from deeplab_axial.protos import experiment_pb2

# csrhddlam/axial-deeplab at 224x224 with 1000 classes (shared/reference/csrhddlam/NOTE.md).
_OFFICIAL_PARAMETERS = {"axial26s": 5_944_936, "axial50s": 11_586_216,
                        "axial50m": 25_179_400, "axial50l": 43_973_480}
_TINY = {"width_multiplier": 0.125}  # 16-channel first stage: fast to build and run


def _parameters(model):
  return int(sum(np.prod(w.shape) for w in model.trainable_weights))


@pytest.mark.parametrize("name", [
    "axial26s",
    pytest.param("axial50s", marks=pytest.mark.slow),
    pytest.param("axial50m", marks=pytest.mark.slow),
    pytest.param("axial50l", marks=pytest.mark.slow)])
def test_parameter_count_equals_official(name):
  model = axial_resnet(name, num_classes=1000, input_shape=(224, 224, 3))
  assert _parameters(model) == _OFFICIAL_PARAMETERS[name]


@pytest.mark.slow
@pytest.mark.parametrize("stem,paper", [("conv", 12.4e6), ("axial", 12.5e6)])
def test_paper_s_parameters_within_two_percent(stem, paper):
  # AD Tab. 1: Conv-Stem + Axial-Attention 12.4M, Full Axial-Attention 12.5M (S width,
  # papers.md §2.6); counted with global span at 224x224.
  model = axial_resnet("axial_resnet_s", num_classes=1000,
                                    input_shape=(224, 224, 3), stem=stem)
  assert abs(_parameters(model) / paper - 1) < 0.02


@pytest.mark.parametrize("output_stride,strides", [
    (16, (4, 8, 16, 16)),
    pytest.param(8, (4, 8, 8, 8), marks=pytest.mark.slow)])
def test_endpoints_any_size_with_local_span(output_stride, strides):
  model = axial_resnet("axial26s", span=3, output_stride=output_stride,
                                    **_TINY)
  outputs = model(tf.random.normal([2, 37, 50, 3]))
  assert sorted(outputs) == ["res2", "res3", "res4", "res5"]
  for index, (key, stride) in enumerate(zip(sorted(outputs), strides)):
    channels = 32 * 2 ** index
    assert outputs[key].shape == (2, -(-37 // stride), -(-50 // stride), channels), key


def test_global_span_tables_follow_feature_length():
  model = axial_resnet("axial26s", input_shape=(64, 64, 3), **_TINY)
  # PT kernel_size: each block's input length; the strided first block still sees it.
  expected = {"res2_block1": 16, "res3_block1": 16, "res3_block2": 8, "res4_block1": 8,
              "res4_block2": 4, "res5_block1": 4}
  for name, length in expected.items():
    attention = model.get_layer(name).attention.height_attention
    assert attention.relative_embeddings.shape[0] == 2 * length - 1, name
  paper = axial_resnet("axial_resnet_s", span=None, **_TINY)
  assert paper.get_layer("res5_block3").attention.width_attention.table_rows == 509


@pytest.mark.slow
def test_axial_stem_and_inception_stem():
  # 4 heads: the 8-channel stem blocks need an even per-head value depth.
  full = axial_resnet("axial_resnet_s", stem="axial", span=5, num_heads=4,
                                   **_TINY)
  stem_blocks = [full.get_layer(f"stem_block{i}") for i in (1, 2, 3)]
  assert [b.strides for b in stem_blocks] == [2, 1, 1]
  assert {b.span for b in stem_blocks} == {STEM_SPAN}
  assert full.get_layer("res2_block1").strides == 2
  outputs = full(tf.random.normal([1, 40, 40, 3]))
  assert outputs["res2"].shape == (1, 10, 10, 32)
  inception = axial_resnet("axial_resnet_s", stem="inception", span=5,
                                        output_stride=16, **_TINY)
  outputs = inception(tf.random.normal([1, 40, 40, 3]))
  assert outputs["res5"].shape == (1, 3, 3, 256)


@pytest.mark.slow
def test_classifier_and_sequential_composition():
  model = axial_resnet("axial26s", num_classes=7, span=3, **_TINY)
  images = tf.random.normal([2, 32, 32, 3])
  logits = model(images)
  assert logits.shape == (2, 7) and logits.dtype == tf.float32
  # Stages compose sequentially: the res4 blocks as a Sequential (rebuilt from their
  # configs and weights) map the functional res3 endpoint to its res4 endpoint.
  backbone = tf_keras.Model(model.input, [model.get_layer("res3_block2").output,
                                          model.get_layer("res4_block4").output])
  res3, res4 = backbone(images)
  blocks = [model.get_layer(f"res4_block{i}") for i in range(1, 5)]
  stage = tf_keras.Sequential([AxialBlock.from_config(b.get_config()) for b in blocks])
  stage.build(res3.shape)
  for copy, block in zip(stage.layers, blocks):
    copy.set_weights(block.get_weights())
  np.testing.assert_allclose(stage(res3), res4, rtol=1e-5, atol=1e-5)


def test_official_preset_at_any_input_size_gets_255_long_tables():
  model = axial_resnet("axial26s", **_TINY)
  assert model.get_layer("res2_block1").attention.height_attention.table_rows == 509
  assert model(tf.random.normal([1, 33, 47, 3]))["res5"].shape[1:3] == (2, 2)


def test_bad_arguments_raise():
  for kwargs, match in [({"name": "axial99"}, "`name`"),
                        ({"name": "axial26s", "stem": "vit"}, "`stem`"),
                        ({"name": "axial26s", "span": 4}, "`span`"),
                        ({"name": "axial26s", "span": 3, "output_stride": 4},
                         "output_stride"),
                        ({"name": "axial26s", "span": 3, "input_shape": (8, 8)},
                         "input_shape"),
                        ({"name": "axial26s", "span": 3, "num_classes": 0}, "num_classes")]:
    with pytest.raises(ValueError, match=match):
      axial_resnet(**kwargs)


def test_from_options_global_span_any_crop():
  options = experiment_pb2.BackboneOptions(name="axial26s", span=0, stem="inception",
                                           output_stride=16, width_multiplier=0.125)
  model = axial_resnet_from_options(options)
  assert model.get_layer("res2_block1").attention.height_attention.table_rows == 509
  for size in (33, 65):
    assert model(tf.random.normal([1, size, size, 3]))["res5"].shape[1] == -(-size // 16)


@pytest.mark.slow
def test_save_and_load_round_trip(tmp_path):
  model = axial_resnet("axial26s", num_classes=5, span=3, **_TINY)
  images = tf.random.normal([1, 32, 32, 3])
  expected = model(images).numpy()
  model.save(str(tmp_path / "saved_model"))
  restored = tf_keras.models.load_model(str(tmp_path / "saved_model"))
  np.testing.assert_allclose(restored(images), expected, rtol=1e-5, atol=1e-6)
  model.save(str(tmp_path / "model.keras"))
  restored = tf_keras.models.load_model(str(tmp_path / "model.keras"))
  np.testing.assert_allclose(restored(images), expected, rtol=1e-5, atol=1e-6)
  # TF-format weights (legacy .h5 weights need unique weight names across nested layers).
  model.save_weights(str(tmp_path / "weights"))
  fresh = axial_resnet("axial26s", num_classes=5, span=3, **_TINY)
  fresh.load_weights(str(tmp_path / "weights"))
  np.testing.assert_allclose(fresh(images), expected, rtol=1e-5, atol=1e-6)
