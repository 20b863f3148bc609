"""Gated-SCNN model builder on a tiny conv backbone."""
import os

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from deeplab_axial import losses
from deeplab_axial.models.gated_scnn import gated_scnn
from deeplab_axial.ops import boundaries
from tests import helpers


def _model():
  backbone = helpers.tiny_backbone({"res2": 4, "res3": 8, "res4": 12, "res5": 16})
  return gated_scnn(backbone, 3, shape_stream_filters=(4, 4, 2),
                    shape_stream_stem_filters=4, aspp_filters=4, atrous_rates=(1, 2),
                    decoder_filters=4, low_level_filters=2)


def test_outputs_and_training_step_with_dual_task_loss():
  model = _model()
  images = tf.random.uniform([2, 32, 48, 3], 0, 255)
  outputs = model(images)
  assert outputs["semantic_logits"].shape == (2, 32, 48, 3)
  assert outputs["boundary_logits"].shape == (2, 32, 48, 1)
  labels = tf.random.uniform([2, 32, 48], 0, 3, tf.int32)
  targets = boundaries.semantic_boundaries(labels)
  with tf.GradientTape() as tape:
    outputs = model(images, training=True)
    loss = losses.gated_scnn_loss(outputs["semantic_logits"],
                                          outputs["boundary_logits"], labels, targets,
                                          seed=[1, 2])["total"]
  gradients = tape.gradient(loss, model.trainable_variables)
  assert np.isfinite(loss.numpy())
  assert all(g is not None for g in gradients)


@pytest.mark.slow
def test_save_load_unknown_size_and_xla(tmp_path):
  model = _model()
  images = tf.random.uniform([1, 64, 32, 3], 0, 255)
  expected = model(images)
  path = os.path.join(tmp_path, "gscnn.keras")
  model.save(path)
  restored = tf_keras.models.load_model(path)
  compiled = tf.function(lambda x: restored(x), jit_compile=True)
  for key, value in compiled(images).items():
    np.testing.assert_allclose(value.numpy(), expected[key].numpy(), atol=1e-4)


def test_backbone_without_endpoints_is_rejected():
  images = tf_keras.Input((None, None, 3))
  flat = tf_keras.Model(images, tf_keras.layers.Conv2D(4, 3)(images))
  with pytest.raises(ValueError, match="res2, res3, res4, res5"):
    gated_scnn(flat, 3)
