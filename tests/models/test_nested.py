"""`models.nested.call_nested` builds the same model as Keras' own nested call."""
import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from deeplab_axial.models import nested
from deeplab_axial.models.meta import panoptic_deeplab
from tests import helpers

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
  ours = _outer_model(backbone, nested.call_nested, input_shape)
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
