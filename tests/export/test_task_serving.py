"""Semantic and classification serving modules on tiny models, against hand-built references.

Semantic: `semantic` is the argmax and `semantic_probs` the softmax of the model's logits
on the batch padded (127.5, bottom/right) to k * 32 + 1, cropped back; `boundary` is the
sigmoid of `boundary_logits`; outside a smaller image of a bytes batch the maps are void.
Classification: each image is resized so its shorter side is `resize_size` and centre
cropped (sizes and offsets worked out by hand below) before the model.
"""
import io

import numpy as np
import pytest
import tensorflow as tf
import tf_keras
from PIL import Image

from deeplab_axial import tasks
from deeplab_axial.tasks import classification
from deeplab_axial.tasks import semantic
from deeplab_axial.tasks import serving
from tests.export import export_fixtures

_LABEL_SPACE = tasks.PostProcessingOptions(thing_class_ids=(), label_divisor=256,
                                           ignore_label=255)
_OPTIONS = serving.ServingOptions(_LABEL_SPACE)


def _png(image):
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, format="PNG")
  return buffer.getvalue()


def _softmax(x):
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def _padded_reference(model, images, padded_size):
  padded = np.full((len(images), *padded_size, 3), 127.5, np.float32)
  padded[:, :images.shape[1], :images.shape[2]] = images
  outputs = {k: v.numpy() for k, v in model(padded, training=False).items()}
  height, width = images.shape[1:3]
  probs = _softmax(outputs["semantic_logits"].astype(np.float64))[:, :height, :width]
  boundary = 1.0 / (1.0 + np.exp(-outputs["boundary_logits"][..., 0].astype(np.float64)))
  return probs, boundary[:, :height, :width]


def test_semantic_signatures_match_the_padded_model_and_void_outside_images():
  model = export_fixtures.semantic_model()
  module = semantic.SemanticServingModule(model, _OPTIONS)
  rng = np.random.default_rng(1)
  images = rng.integers(0, 256, (2, 30, 41, 3)).astype(np.uint8)
  outputs = {k: v.numpy() for k, v in module.serve_images(tf.constant(images)).items()}
  assert set(outputs) == {"semantic", "semantic_probs", "boundary", "image_height",
                          "image_width"}
  probs, boundary = _padded_reference(model, images, (33, 65))  # 30 x 41 -> 33 x 65
  np.testing.assert_allclose(outputs["semantic_probs"], probs, atol=1e-5)
  np.testing.assert_allclose(outputs["boundary"], boundary, atol=1e-5)
  assert outputs["semantic"].dtype == np.int32
  # The argmax of the reference, except where two classes tie within float error.
  top2 = np.sort(probs, -1)[..., -2:]
  clear = top2[..., 1] - top2[..., 0] > 1e-5
  np.testing.assert_array_equal(outputs["semantic"][clear], probs.argmax(-1)[clear])
  assert len(np.unique(outputs["semantic"])) >= 3

  small = images[0, :20, :25]
  mixed = module.serve_image_bytes(tf.constant([_png(images[1]), _png(small)]))
  mixed = {k: v.numpy() for k, v in mixed.items()}
  np.testing.assert_array_equal(mixed["image_height"], [30, 20])
  np.testing.assert_array_equal(mixed["image_width"], [41, 25])
  outside = np.ones((30, 41), bool)
  outside[:20, :25] = False
  assert (mixed["semantic"][1][outside] == 255).all()
  assert (mixed["semantic_probs"][1][outside] == 0).all()
  assert (mixed["boundary"][1][outside] == 0).all()
  np.testing.assert_array_equal(mixed["semantic"][0], outputs["semantic"][1])


def test_semantic_module_without_probs_or_boundary_head():
  images = tf_keras.Input((None, None, 3))
  model = tf_keras.Model(images, {"semantic_logits": tf_keras.layers.Conv2D(3, 1)(images)})
  options = serving.ServingOptions(_LABEL_SPACE, include_semantic_probs=False)
  # Held in a variable: a tf.function method keeps only a weak reference to its object,
  # which a temporary can lose to garbage collection while tracing.
  module = semantic.SemanticServingModule(model, options)
  outputs = module.serve_images(tf.zeros([1, 5, 7, 3], tf.uint8))
  assert set(outputs) == {"semantic", "image_height", "image_width"}
  assert outputs["semantic"].shape == (1, 5, 7)


def test_semantic_module_names_the_missing_model_output():
  images = tf_keras.Input((None, None, 3))
  model = tf_keras.Model(images, {"logits": tf_keras.layers.Conv2D(3, 1)(images)})
  with pytest.raises(ValueError, match=r"\['semantic_logits'\].*semantic model.*logits"):
    semantic.SemanticServingModule(model, _OPTIONS).signatures()


def test_classification_resizes_shorter_side_and_centre_crops_each_image():
  model = export_fixtures.classifier()
  module = classification.ClassificationServingModule(model, _OPTIONS, image_size=8,
                                                      resize_size=10)
  rng = np.random.default_rng(2)
  tall = rng.integers(0, 256, (40, 20, 3)).astype(np.uint8)
  wide = rng.integers(0, 256, (15, 25, 3)).astype(np.uint8)
  # 40 x 20: shorter side 20 -> 10, so 20 x 10; crop offset ((20-8)//2, (10-8)//2) = (6, 1).
  # 15 x 25: scale 10/15, 25 * 2/3 = 16.67 -> 17, so 10 x 17; offset (1, 4).
  crops = np.stack([
      tf.image.resize(tall.astype(np.float32), [20, 10]).numpy()[6:14, 1:9],
      tf.image.resize(wide.astype(np.float32), [10, 17]).numpy()[1:9, 4:12]])
  logits = model(crops).numpy().astype(np.float64)
  outputs = module.serve_image_bytes(tf.constant([_png(tall), _png(wide)]))
  outputs = {k: v.numpy() for k, v in outputs.items()}
  assert set(outputs) == {"classes", "probabilities", "top_5", "image_height",
                          "image_width"}
  np.testing.assert_allclose(outputs["probabilities"], _softmax(logits), atol=1e-5)
  np.testing.assert_array_equal(outputs["classes"], logits.argmax(-1))
  np.testing.assert_array_equal(outputs["top_5"], np.argsort(-logits, -1)[:, :5])
  assert outputs["classes"].dtype == np.int32 and outputs["top_5"].dtype == np.int32
  np.testing.assert_array_equal(outputs["image_height"], [40, 15])
  single = module.serve_images(tf.constant(tall[None]))
  np.testing.assert_allclose(single["probabilities"].numpy(), outputs["probabilities"][:1],
                             atol=1e-6)


def test_classification_module_rejects_a_crop_larger_than_the_resize():
  with pytest.raises(ValueError, match="image_size=12, resize_size=10"):
    classification.ClassificationServingModule(export_fixtures.classifier(), _OPTIONS, image_size=12,
                                                resize_size=10)
