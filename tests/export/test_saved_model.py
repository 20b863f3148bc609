"""SavedModel export: plain-TF loading, parity with the evaluator's path, layout, errors."""
import io
import json
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from deeplab_axial.export import saved_model
from deeplab_axial import tasks

from tests.export import export_fixtures

_MAP_KEYS = ("panoptic", "semantic", "instance")
_FLOAT_MAP_KEYS = ("semantic_probs", "center_heatmap")


def _png(image):
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, format="PNG")
  return buffer.getvalue()


def _jpeg(image):
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, format="JPEG", quality=90)
  return buffer.getvalue()


def _evaluator_path(model, info, images, padded_size):
  """The in-Python evaluation path on images padded (bottom/right, 127.5) by hand."""
  images = np.asarray(images, np.float32)
  padded = np.full((len(images), *padded_size, 3), 127.5, np.float32)
  padded[:, :images.shape[1], :images.shape[2]] = images
  predictions = tasks.predict_with_tta(model, tf.constant(padded))
  post_process = tasks.resolve_post_processing(info, **export_fixtures.POST_PROCESSING)
  outputs = post_process(predictions["semantic_probs"], predictions["center_heatmap"],
                         predictions["center_offset"])
  height, width = images.shape[1:3]
  return {
      "panoptic": outputs["panoptic"].numpy()[:, :height, :width],
      "semantic": outputs["semantic"].numpy()[:, :height, :width],
      "instance": outputs["instance"].numpy()[:, :height, :width],
      "semantic_probs": predictions["semantic_probs"].numpy()[:, :height, :width],
      "center_heatmap": predictions["center_heatmap"].numpy()[:, :height, :width, 0],
      "instance_panoptic_ids": outputs["instance_panoptic_ids"].numpy(),
      "instance_scores": outputs["instance_scores"].numpy(),
  }


@pytest.fixture(scope="module")
def subprocess_outputs(exported, tmp_path_factory):
  """Both signatures run in a fresh interpreter that can import only TensorFlow."""
  rng = np.random.default_rng(1)
  images = export_fixtures.scene_images(rng, 2, 30, 41)
  png_a = export_fixtures.scene_images(rng, 1, 30, 41)[0]
  jpeg_b = export_fixtures.scene_images(rng, 1, 17, 50)[0]
  png_c = export_fixtures.scene_images(rng, 1, 33, 33)[0]
  encoded = [_png(png_a), _jpeg(jpeg_b), _png(png_c)]
  outputs = export_fixtures.run_signatures_in_plain_tf(
      exported[1], [images], [encoded], tmp_path_factory.mktemp("subprocess"))
  outputs = {key.replace("/0/", "/"): value for key, value in outputs.items()}
  return {"images": images, "encoded": encoded, "pngs": [png_a, png_c],
          "outputs": outputs}


def _assert_matches(actual, expected, prefix=""):
  for key in _MAP_KEYS + ("instance_panoptic_ids",):
    np.testing.assert_array_equal(actual[prefix + key], expected[key], err_msg=key)
  for key in _FLOAT_MAP_KEYS + ("instance_scores",):
    np.testing.assert_allclose(actual[prefix + key], expected[key], rtol=1e-4, atol=1e-4,
                               err_msg=key)


def test_default_signature_in_plain_tf_equals_evaluator_path(subprocess_outputs, tiny_model,
                                                             shapes_info):
  images = subprocess_outputs["images"]
  # 30 x 41 pads to k * 32 + 1 = 33 x 65 by the documented rule.
  expected = _evaluator_path(tiny_model, shapes_info, images, (33, 65))
  outputs = subprocess_outputs["outputs"]
  _assert_matches(outputs, expected, "default/")
  np.testing.assert_array_equal(outputs["default/image_height"], [30, 30])
  np.testing.assert_array_equal(outputs["default/image_width"], [41, 41])
  # The test is only meaningful if the predictions hold stuff and thing segments.
  panoptic = outputs["default/panoptic"]
  assert len(np.unique(panoptic)) >= 4
  assert (panoptic % shapes_info.label_divisor > 0).any()


def test_bytes_signature_pads_mixed_sizes_to_the_largest(subprocess_outputs, tiny_model,
                                                         shapes_info):
  outputs = subprocess_outputs["outputs"]
  png_a, png_c = subprocess_outputs["pngs"]
  # The JPEG is decoded by TF's own decoder (as the server does); PNGs are lossless.
  jpeg_b = tf.io.decode_jpeg(subprocess_outputs["encoded"][1], channels=3).numpy()
  batch = np.full((3, 33, 50, 3), 127.5, np.float32)
  for i, image in enumerate((png_a, jpeg_b, png_c)):
    batch[i, :image.shape[0], :image.shape[1]] = image
  # The 33 x 50 batch pads to 33 x 65.
  expected = _evaluator_path(tiny_model, shapes_info, batch, (33, 65))
  sizes = [(30, 41), (17, 50), (33, 33)]
  void = {"panoptic": shapes_info.ignore_label * shapes_info.label_divisor,
          "semantic": shapes_info.ignore_label, "instance": 0, "semantic_probs": 0.0,
          "center_heatmap": 0.0}
  for i, (height, width) in enumerate(sizes):
    inside = np.zeros((33, 50), bool)
    inside[:height, :width] = True
    for key, value in void.items():
      want = expected[key][i].copy()
      want[~inside] = value
      np.testing.assert_allclose(outputs["bytes/" + key][i], want, rtol=1e-4, atol=1e-4,
                                 err_msg=f"{key} of image {i}")
  np.testing.assert_array_equal(outputs["bytes/image_height"], [30, 17, 33])
  np.testing.assert_array_equal(outputs["bytes/image_width"], [41, 50, 33])
  np.testing.assert_array_equal(outputs["bytes/instance_panoptic_ids"],
                                expected["instance_panoptic_ids"])


def test_signature_specs(loaded, shapes_info):
  default = loaded.signatures["serving_default"]
  spec = default.structured_input_signature[1]["images"]
  assert spec.dtype == tf.uint8 and spec.shape.as_list() == [None, None, None, 3]
  spec = loaded.signatures["serve_image_bytes"].structured_input_signature[1]["image_bytes"]
  assert spec.dtype == tf.string and spec.shape.as_list() == [None]
  outputs = default.structured_outputs
  for key in _MAP_KEYS:
    assert outputs[key].dtype == tf.int32 and outputs[key].shape.as_list() == [None] * 3
  assert outputs["semantic_probs"].shape.as_list() == [None, None, None,
                                                       shapes_info.num_classes]
  assert outputs["semantic_probs"].dtype == tf.float32
  assert outputs["center_heatmap"].shape.as_list() == [None, None, None]
  assert sorted(outputs) == sorted(loaded.signatures["serve_image_bytes"].structured_outputs)


def test_layout_version_and_metadata(exported, shapes_info):
  base, path = exported
  # Existing versions 1 and 3 (and a non-numeric folder): the next one is 4.
  assert path == os.path.join(base, "4")
  for name in ("saved_model.pb", "fingerprint.pb", "variables"):
    assert os.path.exists(os.path.join(path, name)), name
  assert not [n for n in os.listdir(base) if n.startswith(".tmp")]
  assert saved_model.next_version(base) == 5
  assert saved_model.resolve_export_dir(base) == path
  with open(os.path.join(path, "assets.extra", "deeplab_axial_export.json")) as f:
    metadata = json.load(f)
  options = metadata["serving_options"]
  assert options["label_divisor"] == shapes_info.label_divisor
  assert options["thing_class_ids"] == list(shapes_info.thing_class_ids)
  assert options["top_k"] == export_fixtures.POST_PROCESSING["top_k"]
  assert metadata["dataset"]["class_names"] == list(shapes_info.class_names)


def test_existing_version_is_refused_before_any_work(exported, tiny_model, shapes_info):
  base, _ = exported
  with pytest.raises(FileExistsError, match=r"4 already exists"):
    saved_model.export_saved_model(tiny_model, base, version=4, dataset_info=shapes_info)
  with pytest.raises(ValueError, match="version must be a positive int"):
    saved_model.export_saved_model(tiny_model, base, version=0, dataset_info=shapes_info)
  with pytest.raises(ValueError, match=r"export needs \['thing_class_ids', 'label_divisor'\]"):
    saved_model.export_saved_model(tiny_model, base)


def test_next_version_on_empty_and_missing_dirs(tmp_path):
  assert saved_model.next_version(str(tmp_path / "missing")) == 1
  (tmp_path / "12").mkdir()
  (tmp_path / "12b").mkdir()
  (tmp_path / "20").write_text("a file, not a version")
  assert saved_model.next_version(str(tmp_path)) == 13
  with pytest.raises(FileNotFoundError, match="no SavedModel"):
    saved_model.resolve_export_dir(str(tmp_path / "missing"))


def test_padded_length_rule():
  lengths = [1, 30, 32, 33, 34, 65, 66, 1024, 1025, 2048]
  assert [int(saved_model.padded_length(n, 32, 1)) for n in lengths] == [
      33, 33, 33, 33, 65, 65, 97, 1025, 1025, 2049]
  assert [int(saved_model.padded_length(n, 16, 0)) for n in (1, 16, 17)] == [16, 16, 32]


@pytest.fixture
def loaded_as_served(exported, default_graph_optimizations):  # pylint: disable=unused-argument
  """A fresh load of the export whose signatures run with Grappler on, as in TF Serving
  (it names the input tensor `images` in a rank error; unoptimized, an internal name)."""
  return tf.saved_model.load(exported[1])


@pytest.mark.parametrize("images, message", [
    (np.zeros([30, 41, 3], np.uint8), r"Shape of tensor images \[30,41,3\] is not compatible "
                                      r"with expected shape \[\?,\?,\?,3\]"),
    (np.zeros([1, 30, 41, 4], np.uint8), r"images_must_be_uint8_batch_height_width_3_RGB"),
    (np.zeros([0, 30, 41, 3], np.uint8), r"`images` holds no image"),
    (np.zeros([1, 0, 41, 3], np.uint8), r"height and width >= 1"),
    (np.zeros([1, 30, 41, 3], np.float32), r"expected to be a uint8 tensor but is a float"),
])
def test_bad_images_give_clear_errors(loaded_as_served, images, message):
  with pytest.raises((tf.errors.InvalidArgumentError, ValueError, TypeError), match=message):
    loaded_as_served.signatures["serving_default"](images=tf.constant(images))


def test_bad_bytes_give_clear_errors(loaded_as_served):
  good = _png(np.zeros((5, 6, 3), np.uint8))
  signature = loaded_as_served.signatures["serve_image_bytes"]
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match=r"image_bytes\[1\] is not an encoded PNG or JPEG image"):
    signature(image_bytes=tf.constant([good, b"not an image"]))
  # A PNG header with a cut-off body: the decoder's own message.
  with pytest.raises(tf.errors.InvalidArgumentError, match="(?i)png|truncated|invalid"):
    signature(image_bytes=tf.constant([good[:40]]))
  with pytest.raises(tf.errors.InvalidArgumentError, match="`image_bytes` holds no image"):
    signature(image_bytes=tf.constant([], tf.string))


def test_static_size_variant_pads_or_shrinks_and_restores(tiny_model, shapes_info):
  options = saved_model.serving_options(dataset_info=shapes_info, static_size=(33, 49),
                                        **export_fixtures.POST_PROCESSING)
  module = saved_model.PanopticServingModule(tiny_model, options)
  rng = np.random.default_rng(2)
  small = export_fixtures.scene_images(rng, 2, 30, 41)
  outputs = module.serve_images(tf.constant(small))
  expected = _evaluator_path(tiny_model, shapes_info, small, (33, 49))
  _assert_matches({k: v.numpy() for k, v in outputs.items()}, expected)
  # 66 x 98 is the static size doubled by pixel repetition: bilinear halving recovers the
  # 33 x 49 source exactly, and nearest doubling repeats each prediction on a 2 x 2 block.
  source = export_fixtures.scene_images(rng, 1, 33, 49)
  large = np.repeat(np.repeat(source, 2, 1), 2, 2)
  outputs = {k: v.numpy() for k, v in module.serve_images(tf.constant(large)).items()}
  expected = _evaluator_path(tiny_model, shapes_info, source, (33, 49))
  for key in _MAP_KEYS:
    np.testing.assert_array_equal(
        outputs[key], np.repeat(np.repeat(expected[key], 2, 1), 2, 2), err_msg=key)
  assert outputs["semantic_probs"].shape == (1, 66, 98, shapes_info.num_classes)
  np.testing.assert_array_equal(outputs["image_height"], [66])


@pytest.mark.slow
def test_static_variant_under_xla_equals_graph_mode(tiny_model, shapes_info):
  images = tf.constant(export_fixtures.scene_images(np.random.default_rng(8), 2, 30, 41))
  results = []
  for jit_compile in (False, True):
    options = saved_model.serving_options(dataset_info=shapes_info, static_size=(33, 49),
                                          jit_compile=jit_compile,
                                          **export_fixtures.POST_PROCESSING)
    # Keep the module referenced: its tf.functions hold only a weak reference to it.
    module = saved_model.PanopticServingModule(tiny_model, options)
    results.append(module.serve_images(images))
  for key in _MAP_KEYS:
    np.testing.assert_array_equal(results[1][key].numpy(), results[0][key].numpy())
  with pytest.raises(ValueError, match="jit_compile=True needs static_size"):
    saved_model.serving_options(dataset_info=shapes_info, jit_compile=True)
