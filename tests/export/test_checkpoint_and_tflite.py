"""Checkpoint restoring for export and the TFLite conversion of the semantic path."""
import numpy as np
import pytest
import tensorflow as tf

from deeplab_axial import checkpoints
from deeplab_axial.export import saved_model
from deeplab_axial.export import tflite

from tests.export import export_fixtures


def test_restore_from_prefix_or_directory(tmp_path):
  trained = export_fixtures.build_tiny_model(4, seed=1)
  step = tf.Variable(7, dtype=tf.int64)
  prefix = tf.train.Checkpoint(model=trained, global_step=step).save(str(tmp_path / "ckpt"))
  fresh = export_fixtures.build_tiny_model(4, seed=2)
  for source in (prefix, str(tmp_path)):
    for variable in fresh.variables:
      variable.assign(tf.zeros_like(variable))
    assert checkpoints.restore_model(fresh, source) == prefix
    for a, b in zip(fresh.variables, trained.variables):
      np.testing.assert_array_equal(a.numpy(), b.numpy())
  with pytest.raises(FileNotFoundError, match="neither a checkpoint prefix"):
    checkpoints.resolve(str(tmp_path / "nope"))
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(FileNotFoundError, match="holds no checkpoint"):
    checkpoints.resolve(str(empty))
  with pytest.raises(ValueError, match="does not match the model"):
    checkpoints.restore_model(export_fixtures.build_tiny_model(5), prefix)


@pytest.mark.slow
def test_tflite_semantic_and_panoptic_paths_match_tensorflow(tiny_model, shapes_info,
                                                             tmp_path):
  images = export_fixtures.scene_images(np.random.default_rng(7), 1, 33, 49)
  images = images.astype(np.float32)
  logits = tiny_model(images)["semantic_logits"].numpy()
  path = tmp_path / "semantic.tflite"
  tflite.convert_semantic_model(tiny_model, str(path), (33, 49))
  runner = tf.lite.Interpreter(model_path=str(path)).get_signature_runner()
  outputs = runner(images=images)
  np.testing.assert_array_equal(outputs["semantic"], logits.argmax(-1))
  # TFLite's float32 kernels (XNNPACK) sum in another order than TensorFlow's: ~1e-5 on
  # probabilities near 0.5 (seen 1.02e-5 with the DeepLab2 BN epsilon of the tiny model).
  np.testing.assert_allclose(outputs["semantic_probs"], tf.nn.softmax(logits).numpy(),
                             atol=3e-5)
  options = saved_model.serving_options(dataset_info=shapes_info, static_size=(33, 49),
                                        **export_fixtures.POST_PROCESSING)
  flatbuffer = tflite.convert_semantic_model(tiny_model, None, (33, 49),
                                             include_panoptic=True, serving=options)
  runner = tf.lite.Interpreter(model_content=flatbuffer).get_signature_runner()
  module = saved_model.PanopticServingModule(tiny_model, options)
  expected = module.serve_images(tf.constant(images.astype(np.uint8)))
  np.testing.assert_array_equal(runner(images=images)["panoptic"],
                                expected["panoptic"].numpy())
