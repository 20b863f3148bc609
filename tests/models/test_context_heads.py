"""Context heads on a tiny fake backbone: output names, shapes, strides and serialization."""
import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from deeplab_axial.models import context_heads


def _fake_backbone(output_stride):
  """Strided convs giving res2..res5 at OS 4, 8, 16, 32 (stride capped at output_stride)."""
  images = tf_keras.Input([None, None, 3])
  x = tf_keras.layers.Conv2D(4, 3, strides=4, padding="same", name="res2")(images)
  endpoints, stride = {"res2": x}, 4
  for stage, channels in ((3, 8), (4, 12), (5, 16)):
    step = 2 if stride < output_stride else 1
    stride *= step
    x = tf_keras.layers.Conv2D(channels, 3, strides=step, padding="same", name=f"res{stage}")(x)
    endpoints[f"res{stage}"] = x
  return tf_keras.Model(images, endpoints, name=f"fake_os{output_stride}")


def _ceil_div(size, stride):
  return -(-size // stride)


HEADS = {
    "danet": (8, lambda e: context_heads.danet_head(e, 5, inter_channels=8),
              {"semantic_logits", "position_logits", "channel_logits"}),
    "isa": (8, lambda e: context_heads.isa_head(e, 5, channels=8, key_channels=4,
                                                partition=(4, 4)), {"semantic_logits"}),
    "jpu_aspp": (32, lambda e: context_heads.jpu_aspp_head(e, 5, jpu_filters=4,
                                                           aspp_channels=8),
                 {"semantic_logits"}),
}


@pytest.mark.parametrize("head_name", sorted(HEADS))
def test_logits_at_output_stride_8_and_input_size(head_name):
  output_stride, make_head, keys = HEADS[head_name]
  backbone = _fake_backbone(output_stride)
  head = make_head(backbone.output)
  model = context_heads.segmentation_model(backbone, head)
  for height, width in ((64, 48), (65, 33)):  # unknown, odd and non-divisible sizes
    images = np.random.uniform(0, 255, [2, height, width, 3]).astype(np.float32)
    endpoints = backbone(images)
    head_outputs = head({key: endpoints[key] for key in head.input})
    outputs = model(images, training=False)
    assert set(head_outputs) == set(outputs) == keys
    for key in keys:
      assert head_outputs[key].shape == (2, _ceil_div(height, 8), _ceil_div(width, 8), 5)
      assert outputs[key].shape == (2, height, width, 5)
      assert outputs[key].dtype == tf.float32


@pytest.mark.parametrize("head_name", sorted(HEADS))
def test_model_json_round_trip(head_name):
  output_stride, make_head, _ = HEADS[head_name]
  backbone = _fake_backbone(output_stride)
  model = context_heads.segmentation_model(backbone, make_head(backbone.output))
  clone = tf_keras.models.model_from_json(model.to_json())
  clone.set_weights(model.get_weights())
  images = np.random.uniform(0, 255, [1, 40, 24, 3]).astype(np.float32)
  for key, value in model(images, training=False).items():
    np.testing.assert_allclose(clone(images, training=False)[key].numpy(), value.numpy(),
                               atol=1e-5)


def test_head_shapes_from_endpoint_shapes():
  shapes = {"res3": (None, None, None, 8), "res4": tf.TensorShape([None, 32, 32, 12]),
            "res5": (1, 16, 16, 16)}
  head = context_heads.jpu_aspp_head(shapes, 19, jpu_filters=4, aspp_channels=8)
  assert head.output["semantic_logits"].shape.as_list() == [None, None, None, 19]
  assert [head.input[key].shape[-1] for key in ("res3", "res4", "res5")] == [8, 12, 16]


def test_errors_name_the_problem():
  backbone = _fake_backbone(32)
  with pytest.raises(ValueError, match="res6"):
    context_heads.danet_head(backbone.output, 3, feature_key="res6")
  with pytest.raises(ValueError, match="num_classes"):
    context_heads.isa_head(backbone.output, 0)
  with pytest.raises(ValueError, match="feature_keys"):
    context_heads.jpu_aspp_head(backbone.output, 3, feature_keys=("res4", "res5"))
  head = context_heads.danet_head({"c5": (None, None, None, 16)}, 3, feature_key="c5")
  with pytest.raises(ValueError, match="c5"):
    context_heads.segmentation_model(backbone, head)
