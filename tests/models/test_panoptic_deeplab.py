"""Tests for the Panoptic-DeepLab decoders, heads and model."""
import os

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from deeplab_axial.models.meta import panoptic_deeplab

from tests import helpers

_NUM_CLASSES = 5


_TINY_WIDTHS = {"res2": 8, "res3": 12, "res5": 16}


def _tiny_model(input_shape=None, **kwargs):
  backbone = helpers.tiny_backbone(_TINY_WIDTHS, input_shape=input_shape or (None, None, 3))
  kwargs = {"aspp_channels": 8, "atrous_rates": (1, 2, 3), "semantic_decoder_channels": 8,
            "instance_decoder_channels": 6, "semantic_low_level_projections": (4, 2),
            "instance_low_level_projections": (3, 2), "semantic_head_channels": 8,
            "center_head_channels": 4, "offset_head_channels": 4, **kwargs}
  return panoptic_deeplab.panoptic_deeplab(backbone, _NUM_CLASSES, input_shape=input_shape,
                                           **kwargs)


def _trainable(layer):
  return sum(int(np.prod(w.shape)) for w in layer.trainable_weights)


# Hand formulas from papers.md §5.1 (BN adds γ and β per channel).
def _conv(k, c_in, c_out):
  return k * k * c_in * c_out + 2 * c_out


def _separable(k, c_in, c_out):
  return k * k * c_in + 2 * c_in + _conv(1, c_in, c_out)


def _aspp(c_in, c, separable):
  atrous = _separable(3, c_in, c) if separable else _conv(3, c_in, c)
  return 2 * _conv(1, c_in, c) + 3 * atrous + _conv(1, 5 * c, c)


def _decoder(c5, c3, c2, aspp, decoder, projections, use_aspp=True, separable=False):
  high = _aspp(c5, aspp, separable) if use_aspp else _conv(1, c5, aspp)
  return (high + _conv(1, c3, projections[0]) + _separable(5, aspp + projections[0], decoder)
          + _conv(1, c2, projections[1]) + _separable(5, decoder + projections[1], decoder))


def _head(c_in, filters, outputs):
  return _separable(5, c_in, filters) + c_in * 0 + filters * outputs + outputs


def test_output_shapes_and_dtypes_for_odd_and_unknown_sizes():
  model = _tiny_model()
  assert model.input_shape == (None, None, None, 3)
  for size in ((65, 97), (33, 40)):
    outputs = model(tf.random.uniform([2, *size, 3], 0, 255))
    assert sorted(outputs) == ["center_heatmap", "center_offset", "semantic_logits"]
    assert outputs["semantic_logits"].shape == (2, *size, _NUM_CLASSES)
    assert outputs["center_heatmap"].shape == (2, *size, 1)
    assert outputs["center_offset"].shape == (2, *size, 2)
    assert all(v.dtype == tf.float32 for v in outputs.values())


@pytest.mark.parametrize("use_aspp, separable", [(True, False), (True, True), (False, False)])
def test_decoder_and_head_parameter_counts(use_aspp, separable):
  c2, c3, c5 = 24, 40, 64
  features = {"res2": tf.zeros([1, 17, 17, c2]), "res3": tf.zeros([1, 9, 9, c3]),
              "res5": tf.zeros([1, 5, 5, c5])}
  for decoder_channels, projections in ((256, (64, 32)), (128, (32, 16))):
    decoder = panoptic_deeplab.PanopticDeepLabDecoder(
        decoder_channels, projections, use_aspp=use_aspp, aspp_use_separable_conv=separable)
    assert decoder(features).shape == (1, 17, 17, decoder_channels)
    assert _trainable(decoder) == _decoder(c5, c3, c2, 256, decoder_channels, projections,
                                           use_aspp, separable)
  for c_in, filters, outputs in ((256, 256, 19), (128, 32, 1), (128, 32, 2)):
    head = panoptic_deeplab.PanopticHead(filters, outputs)
    assert head(tf.zeros([1, 3, 3, c_in])).shape == (1, 3, 3, outputs)
    assert _trainable(head) == _head(c_in, filters, outputs)


def _check_resnet50_preset_parameters(model, separable, use_aspp):
  backbone = 25_557_032 - (2048 * 1000 + 1000)  # torchvision ResNet-50 without fc
  decoders = (_decoder(2048, 512, 256, 256, 256, (64, 32), use_aspp, separable)
              + _decoder(2048, 512, 256, 256, 128, (32, 16), use_aspp, separable))
  heads = _head(256, 256, 19) + _head(128, 32, 1) + _head(128, 32, 2)
  assert _trainable(model) == backbone + decoders + heads
  # AD Tab. 6, "ResNet-50 (their impl.)": 30.0M with ASPP, 24.8M without.
  paper = 30.0e6 if use_aspp else 24.8e6
  assert abs(_trainable(model) - paper) / paper < 0.01


def test_resnet50_preset_parameters_and_odd_size():
  model = panoptic_deeplab.panoptic_deeplab_resnet50(19)
  _check_resnet50_preset_parameters(model, separable=True, use_aspp=True)
  outputs = model(tf.random.uniform([1, 65, 65, 3], 0, 255), training=False)
  assert outputs["semantic_logits"].shape == (1, 65, 65, 19)
  assert outputs["center_offset"].shape == (1, 65, 65, 2)


@pytest.mark.slow
def test_resnet50_preset_without_aspp_parameters():
  model = panoptic_deeplab.panoptic_deeplab_resnet50(19, use_aspp=False)
  _check_resnet50_preset_parameters(model, separable=False, use_aspp=False)


def _resize_align_corners_numpy(image, out_h, out_w):
  in_h, in_w = image.shape[:2]
  ys = np.arange(out_h) * (in_h - 1) / max(out_h - 1, 1)
  xs = np.arange(out_w) * (in_w - 1) / max(out_w - 1, 1)
  y0 = np.floor(ys).astype(int)
  x0 = np.floor(xs).astype(int)
  y1 = np.minimum(y0 + 1, in_h - 1)
  x1 = np.minimum(x0 + 1, in_w - 1)
  wy = (ys - y0)[:, None, None]
  wx = (xs - x0)[None, :, None]
  top = image[y0][:, x0] * (1 - wx) + image[y0][:, x1] * wx
  bottom = image[y1][:, x0] * (1 - wx) + image[y1][:, x1] * wx
  return top * (1 - wy) + bottom * wy


def test_resize_and_offset_rescaling_match_numpy():
  prediction = np.random.default_rng(0).normal(size=(1, 17, 25, 2)).astype(np.float32)
  reference = tf.zeros([1, 65, 97, 3])
  resized = panoptic_deeplab.ResizeToReference()([prediction, reference]).numpy()
  want = _resize_align_corners_numpy(prediction[0], 65, 97)
  np.testing.assert_allclose(resized[0], want, rtol=1e-5, atol=1e-5)
  # 17 → 65 and 25 → 97 are both ×4 with aligned corners: a 1-pixel offset becomes 4.
  offsets = panoptic_deeplab.ResizeToReference(rescale_offsets=True)(
      [np.ones([1, 17, 25, 2], np.float32), reference]).numpy()
  np.testing.assert_allclose(offsets, 4.0, rtol=1e-6)
  offsets = panoptic_deeplab.ResizeToReference(rescale_offsets=True)(
      [np.ones([1, 5, 9, 2], np.float32), tf.zeros([1, 9, 9, 3])]).numpy()
  np.testing.assert_allclose(offsets[..., 0], 2.0, rtol=1e-6)  # (9 − 1) / (5 − 1)
  np.testing.assert_allclose(offsets[..., 1], 1.0, rtol=1e-6)  # (9 − 1) / (9 − 1)


def test_input_normalization():
  model = _tiny_model(normalize_input=True)
  unnormalized = _tiny_model(normalize_input=False)
  unnormalized.set_weights(model.get_weights())
  images = np.random.default_rng(1).uniform(0, 255, size=(1, 17, 17, 3)).astype(np.float32)
  want = unnormalized(images / 127.5 - 1.0, training=False)
  got = model(images, training=False)
  for key in want:
    np.testing.assert_allclose(got[key], want[key], rtol=1e-4, atol=1e-5)


def _check_round_trip(model, restored, images):
  want = model(images, training=False)
  got = restored(images, training=False)
  for key in want:
    np.testing.assert_allclose(got[key], want[key], rtol=1e-5, atol=1e-5)


def test_config_and_keras_file_round_trip(tmp_path):
  model = _tiny_model()
  images = tf.random.uniform([1, 33, 41, 3], 0, 255)
  clone = tf_keras.Model.from_config(model.get_config())
  clone.set_weights(model.get_weights())
  _check_round_trip(model, clone, images)
  path = os.path.join(tmp_path, "model.keras")
  model.save(path)
  _check_round_trip(model, tf_keras.models.load_model(path), images)


@pytest.mark.slow
def test_saved_model_round_trip(tmp_path):
  model = _tiny_model()
  path = os.path.join(tmp_path, "saved_model")
  model.save(path)
  _check_round_trip(model, tf_keras.models.load_model(path),
                    tf.random.uniform([1, 33, 41, 3], 0, 255))


def test_layer_configs_round_trip():
  for layer in (panoptic_deeplab.PanopticDeepLabDecoder(
      8, (4, 2), use_aspp=False, aspp_channels=16, low_level_endpoints=("a", "b")),
                panoptic_deeplab.PanopticHead(4, 2, kernel_size=3),
                panoptic_deeplab.ResizeToReference(rescale_offsets=True)):
    config = layer.get_config()
    assert type(layer).from_config(config).get_config() == config


def test_mixed_precision_outputs_float32(mixed_precision):  # pylint: disable=unused-argument
  model = _tiny_model()
  outputs = model(tf.random.uniform([1, 33, 33, 3], 0, 255), training=False)
  assert all(v.dtype == tf.float32 for v in outputs.values())
  assert all(np.isfinite(v.numpy()).all() for v in outputs.values())


def test_xla_matches_eager():
  model = _tiny_model()
  images = tf.random.uniform([2, 33, 33, 3], 0, 255)
  forward = tf.function(lambda x: model(x, training=False), jit_compile=True)
  eager = model(images, training=False)
  compiled = forward(images)
  for key in eager:
    np.testing.assert_allclose(compiled[key], eager[key], rtol=1e-4, atol=1e-4)


def test_training_steps_reduce_a_toy_loss():
  model = _tiny_model(aspp_dropout_rate=0.0)  # no dropout: the loss is deterministic
  images = tf.random.uniform([2, 33, 33, 3], 0, 255)
  optimizer = tf_keras.optimizers.Adam(1e-3)
  heatmaps = tf.random.normal([2, 33, 33, 1])
  labels = tf.random.uniform([2, 33, 33], 0, _NUM_CLASSES, dtype=tf.int32)

  def train_step():
    with tf.GradientTape() as tape:
      outputs = model(images, training=True)
      loss = (tf.reduce_mean(tf.square(outputs["center_heatmap"] - heatmaps))
              + tf.reduce_mean(tf.abs(outputs["center_offset"]))
              + tf.reduce_mean(tf_keras.losses.sparse_categorical_crossentropy(
                  labels, outputs["semantic_logits"], from_logits=True)))
    gradients = tape.gradient(loss, model.trainable_variables)
    optimizer.apply_gradients(zip(gradients, model.trainable_variables))
    return loss, gradients

  loss, gradients = train_step()
  # The ASPP pooling-branch conv sees a 1×1 map, so every weight gets a gradient.
  assert all(g is not None and np.isfinite(g.numpy()).all() for g in gradients)
  losses = [float(loss)] + [float(train_step()[0]) for _ in range(3)]
  assert losses[-1] < losses[0]


def test_bad_backbones_raise():
  images = tf_keras.Input((None, None, 3))
  single = tf_keras.Model(images, tf_keras.layers.Conv2D(4, 3)(images))
  with pytest.raises(ValueError, match="dict of endpoints"):
    panoptic_deeplab.panoptic_deeplab(single, 3)
  missing = tf_keras.Model(images, {"res5": tf_keras.layers.Conv2D(4, 3)(images)})
  with pytest.raises(ValueError, match=r"\['res3', 'res2'\] are missing"):
    panoptic_deeplab.panoptic_deeplab(missing, 3)
  with pytest.raises(ValueError, match="num_classes"):
    panoptic_deeplab.panoptic_deeplab(helpers.tiny_backbone(_TINY_WIDTHS), 0)
  with pytest.raises(ValueError, match="output_stride"):
    panoptic_deeplab.panoptic_deeplab_resnet50(3, output_stride=4)
