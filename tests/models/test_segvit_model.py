"""SegViT model builder: plain and Shrunk, shapes, save/load, XLA, multiply-adds."""
import os

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from deeplab_axial import losses
from deeplab_axial.models import count_multiply_adds
from deeplab_axial.models.segvit import segvit

_TINY = {"hidden_size": 32, "num_layers": 3, "num_heads": 2, "head_num_layers": 1}


@pytest.mark.parametrize("shrunk", [False, True])
def test_outputs_unknown_size_and_one_training_step(shrunk):
  model = segvit(4, shrunk=shrunk, position_grid_size=(4, 4), **_TINY)
  images = tf.random.uniform([2, 64, 80, 3], 0, 255)
  outputs = model(images)
  outputs_count = 1 if shrunk else 3  # 1 decoder layer × 1 stage vs 3 stages
  assert outputs["semantic_logits"].shape == (2, 64, 80, 4)
  assert outputs["class_logits"].shape == (2, outputs_count, 4, 5)
  assert outputs["mask_logits"].shape == (2, outputs_count, 4, 5, 4)
  labels = tf.random.uniform([2, 64, 80], 0, 4, tf.int32)
  with tf.GradientTape() as tape:
    loss = losses.segvit_loss(model(images, training=True), labels)["total"]
  gradients = tape.gradient(loss, model.trainable_variables)
  assert all(g is not None and np.all(np.isfinite(g.numpy())) for g in gradients)


@pytest.mark.slow
def test_save_load_and_xla(tmp_path):
  model = segvit(3, shrunk=True, position_grid_size=(2, 2), **_TINY)
  images = tf.random.uniform([1, 48, 32, 3], 0, 255)
  expected = model(images)["semantic_logits"].numpy()
  path = os.path.join(tmp_path, "segvit.keras")
  model.save(path)
  restored = tf_keras.models.load_model(path)
  np.testing.assert_allclose(restored(images)["semantic_logits"].numpy(), expected, atol=1e-5)
  compiled = tf.function(lambda x: model(x)["semantic_logits"], jit_compile=True)
  np.testing.assert_allclose(compiled(images).numpy(), expected, atol=1e-4)


@pytest.mark.slow
def test_shrunk_backbone_costs_fewer_multiply_adds():
  plain = segvit(3, input_shape=(128, 128, 3), **_TINY)
  shrunk = segvit(3, input_shape=(128, 128, 3), shrunk=True, **_TINY)
  plain_count = count_multiply_adds(plain, (128, 128, 3), per_layer=True)[1]
  shrunk_count = count_multiply_adds(shrunk, (128, 128, 3), per_layer=True)[1]
  backbone = lambda records: sum(c for p, c in records if "/backbone/" in p)
  # 3 blocks on 64 tokens; Shrunk (shrink_index 2): block 1 on 64 tokens, block 2 with 16
  # queries over 64 keys, block 3 on 16 tokens. Per block on n tokens: 4·n·d² (q, k, v,
  # output projections) + 8·n·d² (MLP) + 2·n²·d (q·kᵀ and weights·v).
  n, d = 64, 32
  full = lambda tokens: 12 * tokens * d * d + 2 * tokens * tokens * d
  query_downsample = 16 * d * d + 2 * n * d * d + 16 * d * d + 2 * 16 * n * d + 8 * 16 * d * d
  patch = n * 16 * 16 * 3 * d
  assert backbone(plain_count) == patch + 3 * full(n)
  assert backbone(shrunk_count) == patch + full(n) + query_downsample + full(16)


def test_bad_arguments():
  with pytest.raises(ValueError, match="backbone"):
    segvit(3, backbone="vit_giant")
  with pytest.raises(ValueError, match="shrink_index"):
    segvit(3, shrink_index=2)
  with pytest.raises(ValueError, match="num_classes"):
    segvit(0)
