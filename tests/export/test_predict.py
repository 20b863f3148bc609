"""Prediction on image folders: files written, formats, segments JSON, errors, CLI."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from deeplab_axial import predict
from deeplab_axial.data import encoding
from deeplab_axial.export import saved_model

from tests.export import export_fixtures

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
  """Two PNGs of different sizes and a JPEG in a sub-folder; returns (folder, images)."""
  folder = tmp_path_factory.mktemp("images")
  rng = np.random.default_rng(6)
  images = {"b_first": export_fixtures.scene_images(rng, 1, 21, 30)[0],
            "a_second": export_fixtures.scene_images(rng, 1, 26, 19)[0]}
  for name, image in images.items():
    Image.fromarray(image).save(folder / f"{name}.png")
  (folder / "sub").mkdir()
  jpeg = export_fixtures.scene_images(rng, 1, 18, 22)[0]
  Image.fromarray(jpeg).save(folder / "sub" / "c_third.jpg", quality=95)
  images["c_third"] = np.asarray(Image.open(folder / "sub" / "c_third.jpg").convert("RGB"))
  (folder / "notes.txt").write_text("not an image, not collected")
  return folder, images


def _signature_outputs(loaded, image):
  outputs = loaded.signatures["serving_default"](images=tf.constant(image[None]))
  return {key: value.numpy()[0] for key, value in outputs.items()}


def _check_generic_outputs(output_dir, images, loaded, info):
  with open(os.path.join(output_dir, "segments.json")) as f:
    segments = json.load(f)
  by_name = {os.path.splitext(os.path.basename(r["file_name"]))[0]: r
             for r in segments["images"]}
  assert sorted(by_name) == sorted(images)
  for name, image in images.items():
    expected = _signature_outputs(loaded, image)
    ids = encoding.rgb_to_id(
        np.asarray(Image.open(os.path.join(output_dir, "panoptic", name + ".png"))))
    np.testing.assert_array_equal(ids, expected["panoptic"])
    overlay = np.asarray(Image.open(os.path.join(output_dir, "overlays", name + ".png")))
    assert overlay.shape == image.shape
    record = by_name[name]
    assert (record["height"], record["width"]) == image.shape[:2]
    void = info.ignore_label * info.label_divisor
    assert sorted(s["id"] for s in record["segments_info"]) == sorted(
        set(np.unique(expected["panoptic"])) - {void})
    scores = dict(zip(expected["instance_panoptic_ids"], expected["instance_scores"]))
    for segment in record["segments_info"]:
      mask = expected["panoptic"] == segment["id"]
      rows, cols = np.nonzero(mask)
      assert segment["area"] == mask.sum()
      assert segment["bbox"] == [cols.min(), rows.min(), cols.max() - cols.min() + 1,
                                 rows.max() - rows.min() + 1]
      assert segment["category_id"] == segment["id"] // info.label_divisor
      assert segment["category"] == info.class_names[segment["category_id"]]
      assert segment["isthing"] == (segment["category_id"] in info.thing_class_ids)
      if segment["isthing"]:
        assert segment["score"] == pytest.approx(scores[segment["id"]], rel=1e-6)


@pytest.mark.slow
def test_predict_cli_on_a_folder(exported, loaded, image_folder, shapes_info, tmp_path):
  folder, images = image_folder
  corrupt = tmp_path / "inputs"
  corrupt.mkdir()
  (corrupt / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a PNG body")
  output_dir = tmp_path / "out"
  env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
  completed = subprocess.run(
      # Without Grappler's rewrites, as in this process (conftest): the rewritten graph
      # rounds otherwise (scores 1.7e-6 apart, relative, on an AVX512-FP16 Xeon).
      [sys.executable, os.path.join(_REPO, "tests", "run_without_graph_optimizations.py"),
       os.path.join(_REPO, "trainer", "predict.py"),
       f"--saved_model={exported[0]}", f"--input={folder}", f"--input={corrupt}",
       f"--output_dir={output_dir}", "--skip_unreadable", "--batch_size=2"],
      env=env, capture_output=True, text=True, timeout=300, check=False)
  assert completed.returncode == 0, completed.stderr[-3000:]
  assert "wrote 3 predictions" in completed.stdout
  assert "broken.png" in completed.stderr
  assert "predict: 4/4 (100.0%)" in completed.stdout  # the progress bar (stdout)
  _check_generic_outputs(str(output_dir), images, loaded, shapes_info)


def test_unreadable_image_error_names_the_file(exported, image_folder, tmp_path):
  predictor = predict.SavedModelPredictor(exported[0])
  broken = tmp_path / "broken.jpg"
  broken.write_bytes(b"garbage")
  with pytest.raises(ValueError, match=r"cannot read image .*broken\.jpg"):
    predict.predict_images(predictor, [str(broken)], str(tmp_path / "out"), progress=False)
  with pytest.raises(FileNotFoundError, match="nothing_here"):
    predict.predict_images(predictor, [str(tmp_path / "nothing_here")],
                           str(tmp_path / "out"), progress=False)


def test_coco_format_and_keras_predictor(exported, tiny_model, image_folder, shapes_info,
                                         tmp_path):
  folder, images = image_folder
  keras_predictor = predict.KerasPredictor(
      tiny_model, saved_model.serving_options(dataset_info=shapes_info,
                                              **export_fixtures.POST_PROCESSING))
  summary = predict.predict_images(keras_predictor, [str(folder / "b_first.png")],
                                   str(tmp_path), dataset_info=shapes_info,
                                   output_format="coco", progress=False)
  assert summary["num_images"] == 1
  with open(tmp_path / "panoptic.json") as f:
    annotation = json.load(f)["annotations"][0]
  ids = encoding.rgb_to_id(
      np.asarray(Image.open(tmp_path / "panoptic" / annotation["file_name"])))
  saved = predict.SavedModelPredictor(exported[1])(images["b_first"][None])
  panoptic = saved["panoptic"][0]
  np.testing.assert_array_equal(keras_predictor(images["b_first"][None])["panoptic"][0],
                                panoptic)
  # Each COCO segment covers exactly one of our segments, with the official category id.
  for segment in annotation["segments_info"]:
    ours = np.unique(panoptic[ids == segment["id"]])
    assert len(ours) == 1
    assert segment["category_id"] == shapes_info.official_category_ids[
        ours[0] // shapes_info.label_divisor]
  with pytest.raises(ValueError, match="output_format must be one of"):
    predict.predict_images(keras_predictor, [str(folder)], str(tmp_path),
                           output_format="tiff", progress=False)
