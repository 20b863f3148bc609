"""graph_code: `graph_call` (autograph leaves the call alone; Keras still sees its
signature), and `call_nested` and `OutputSpecFromShape`, which must build the models
Keras' own scratch-graph traces build."""
import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from deeplab_axial.layers import graph_code
from deeplab_axial.models.meta import panoptic_deeplab
from tests import helpers


class _Doubling(tf_keras.layers.Layer):
  """Doubles in training; branches on a tensor with a Python `if` (autograph-only code)."""

  def call(self, inputs, training=None):
    if tf.reduce_sum(inputs) > 0:  # needs autograph inside a tf.function
      return inputs * (2.0 if training else 1.0)
    return inputs


class _GraphDoubling(tf_keras.layers.Layer):

  @graph_code.graph_call
  def call(self, inputs, training=None):
    return inputs * (2.0 if training else 1.0)


class _GraphPythonIf(_Doubling):

  @graph_code.graph_call
  def call(self, inputs, training=None):
    return super().call(inputs, training=training)


def test_autograph_converts_a_plain_call_but_not_a_graph_call():
  inputs = tf.ones([1, 2, 3])
  converted = tf.function(lambda x: _Doubling()(x, training=True))
  assert float(tf.reduce_sum(converted(inputs))) == 12.0
  unconverted = tf.function(lambda x: _GraphPythonIf()(x, training=True))
  with pytest.raises(TypeError, match="(?i)bool|autograph"):
    unconverted(inputs)


def test_keras_sees_the_training_argument_and_passes_no_mask():
  layer = _GraphDoubling()
  assert layer._expects_training_arg and not layer._expects_mask_arg  # pylint: disable=protected-access
  # A mask-producing layer before it: Keras would pass `mask=` to a call taking **kwargs.
  model = tf_keras.Sequential([tf_keras.layers.Masking(), layer])
  inputs = tf.ones([1, 2, 3])
  assert float(tf.reduce_sum(model(inputs, training=True))) == 12.0
  assert float(tf.reduce_sum(model(inputs, training=False))) == 6.0


_WIDTHS = {"res2": 8, "res3": 8, "res4": 16, "res5": 16}


def _outer_model(backbone, call, input_shape):
  images = tf_keras.Input(input_shape, name="images")
  endpoints = call(backbone, tf_keras.layers.Rescaling(1.0 / 127.5, offset=-1.0,
                                                      name="normalize")(images))
  logits = tf_keras.layers.Conv2D(3, 1, name="logits")(endpoints["res3"])
  return tf_keras.Model(images, {"logits": logits, "res5": endpoints["res5"]})


@pytest.mark.parametrize("input_shape", [(None, None, 3), (33, 41, 3)],
                         ids=["backbone_spec", "other_spec"])
def test_same_graph_weights_and_outputs_as_the_plain_nested_call(input_shape):
  backbone = helpers.tiny_backbone(_WIDTHS, batch_norm=(0.9, 1e-3))
  helpers.randomize_batch_norms(backbone, np.random.default_rng(0))
  plain = _outer_model(backbone, lambda model, x: model(x), input_shape)
  ours = _outer_model(backbone, graph_code.call_nested, input_shape)
  ours.get_layer("logits").set_weights(plain.get_layer("logits").get_weights())
  # Layer by layer the same (the graph's wiring differs only in which call of the shared
  # backbone each model uses; the outputs below check the wiring).
  def layers(model):
    return [(layer["class_name"], layer["config"]) for layer in model.get_config()["layers"]]

  assert layers(ours) == layers(plain)
  assert [w.name for w in ours.weights] == [w.name for w in plain.weights]
  assert {k: v.shape.as_list() for k, v in ours.output.items()} == {
      k: v.shape.as_list() for k, v in plain.output.items()}
  images = tf.constant(np.random.default_rng(1).uniform(0, 255, (2, 33, 41, 3)),
                       tf.float32)
  for training in (False, True):
    for key, value in plain(images, training=training).items():
      np.testing.assert_allclose(ours(images, training=training)[key].numpy(),
                                 value.numpy(), rtol=1e-6, atol=1e-6, err_msg=key)
  # The backbone is one nested layer of each outer model, called once by each.
  assert sum(layer is backbone for layer in ours.layers) == 1
  assert len(backbone.inbound_nodes) == 2  # one call node per outer model


def test_panoptic_deeplab_round_trips_through_its_config():
  backbone = helpers.tiny_backbone(_WIDTHS)
  model = panoptic_deeplab.panoptic_deeplab(
      backbone, 3, use_aspp=False, semantic_decoder_channels=8, instance_decoder_channels=8,
      semantic_low_level_projections=(4, 4), instance_low_level_projections=(4, 4),
      semantic_head_channels=8, center_head_channels=4, offset_head_channels=4)
  clone = tf_keras.Model.from_config(model.get_config(), custom_objects={
      cls.__name__: cls for cls in (panoptic_deeplab.PanopticDeepLabDecoder,
                                    panoptic_deeplab.PanopticHead)})
  clone.set_weights(model.get_weights())
  images = tf.constant(np.random.default_rng(2).uniform(0, 255, (1, 32, 32, 3)), tf.float32)
  for key, value in model(images).items():
    np.testing.assert_allclose(clone(images)[key].numpy(), value.numpy(), rtol=1e-5,
                               atol=1e-5, err_msg=key)


@pytest.mark.parametrize("policy", ["float32", "mixed_float16"])
def test_axial_blocks_give_the_model_keras_scratch_traces_give(policy, monkeypatch):
  from deeplab_axial.layers import axial_blocks  # pylint: disable=import-outside-toplevel
  from deeplab_axial.models import axial_resnet  # pylint: disable=import-outside-toplevel

  def build():
    tf_keras.utils.set_random_seed(3)
    return axial_resnet("axial26s", span=5, width_multiplier=0.125, output_stride=16)

  previous = tf_keras.mixed_precision.global_policy()
  tf_keras.mixed_precision.set_global_policy(policy)
  try:
    ours = build()
    with monkeypatch.context() as patch:
      patch.setattr(axial_blocks.AxialBlock, "_infer_output_signature",
                    tf_keras.layers.Layer._infer_output_signature)  # pylint: disable=protected-access
      traced = build()
  finally:
    tf_keras.mixed_precision.set_global_policy(previous)
  assert [(w.name, w.shape) for w in ours.weights] == [(w.name, w.shape)
                                                       for w in traced.weights]
  specs = {k: (v.shape.as_list(), v.dtype) for k, v in traced.output.items()}
  assert {k: (v.shape.as_list(), v.dtype) for k, v in ours.output.items()} == specs
  assert specs["res5"][1] == (tf.float16 if policy == "mixed_float16" else tf.float32)
  ours.set_weights(traced.get_weights())
  images = tf.constant(np.random.default_rng(4).normal(size=(1, 35, 29, 3)), tf.float32)
  for training in (False, True):
    expected = traced(images, training=training)
    for key, value in ours(images, training=training).items():
      np.testing.assert_allclose(value.numpy(), expected[key].numpy(), rtol=1e-3,
                                 atol=1e-3, err_msg=key)
