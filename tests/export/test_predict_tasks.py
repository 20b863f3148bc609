"""Prediction files of semantic models and classifiers (exported or in-process).

Semantic: `semantic/<stem>.png` holds the signature's class ids, `colored/<stem>.png` the
dataset's palette colour of each id (looked up here in `DatasetInfo.colormap`),
`boundary/<stem>.png` the boundary probability x 255. Classification: one JSON line per
image with the signature's top-5 classes, their probabilities and synset names.
"""
import json
import os
import types

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from deeplab_axial import predict
from deeplab_axial.data import datasets
from deeplab_axial.export import saved_model
from deeplab_axial.tasks import classification
from deeplab_axial.tasks import semantic

from tests.export import export_fixtures


def _stand_in_task(serving_module):
  """The one `Task` method prediction and export use."""
  return types.SimpleNamespace(serving_module=serving_module)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  """Two PNGs of different sizes; returns (folder, {stem: image})."""
  root = tmp_path_factory.mktemp("images")
  rng = np.random.default_rng(3)
  images = {"first": export_fixtures.scene_images(rng, 1, 21, 30)[0],
            "second": export_fixtures.scene_images(rng, 1, 26, 19)[0]}
  for name, image in images.items():
    Image.fromarray(image).save(root / f"{name}.png")
  return root, images


@pytest.fixture(scope="module")
def semantic_export(shapes_info, tmp_path_factory):
  model = export_fixtures.semantic_model(shapes_info.num_classes)
  task = _stand_in_task(semantic.SemanticServingModule)
  return saved_model.export_saved_model(model, str(tmp_path_factory.mktemp("semantic")),
                                        dataset_info=shapes_info, task=task)


def test_semantic_predictions_are_class_ids_palette_colours_and_boundaries(
    semantic_export, folder, shapes_info, tmp_path):
  root, images = folder
  predictor = predict.SavedModelPredictor(semantic_export)
  assert predictor.task == "semantic"
  summary = predict.predict_images(predictor, str(root), str(tmp_path), progress=False)
  assert summary == {"num_images": 2, "skipped": []}
  signature = tf.saved_model.load(semantic_export).signatures["serving_default"]
  palette = np.asarray(shapes_info.colormap, np.uint8)
  for name, image in images.items():
    expected = signature(images=tf.constant(image[None]))
    ids = np.asarray(Image.open(tmp_path / "semantic" / f"{name}.png"))
    assert ids.dtype == np.uint8
    np.testing.assert_array_equal(ids, expected["semantic"].numpy()[0])
    assert len(np.unique(ids)) >= 2
    colored = np.asarray(Image.open(tmp_path / "colored" / f"{name}.png"))
    np.testing.assert_array_equal(colored, palette[ids])
    overlay = np.asarray(Image.open(tmp_path / "overlays" / f"{name}.png"))
    assert overlay.shape == image.shape and not np.array_equal(overlay, image)
    boundary = np.asarray(Image.open(tmp_path / "boundary" / f"{name}.png"))
    np.testing.assert_array_equal(
        boundary, np.round(expected["boundary"].numpy()[0] * 255).astype(np.uint8))


def test_semantic_model_rejects_official_panoptic_formats(semantic_export, folder,
                                                          tmp_path):
  predictor = predict.SavedModelPredictor(semantic_export)
  with pytest.raises(ValueError, match="output_format='coco' is for panoptic models"):
    predict.predict_images(predictor, str(folder[0]), str(tmp_path), output_format="coco",
                           progress=False)


def test_classification_predictions_are_json_lines_of_the_top_5(folder, tmp_path):
  root, images = folder
  info = datasets.get_dataset_info("imagenet")
  model = export_fixtures.classifier(info.num_classes)
  options = saved_model.serving_options(dataset_info=info)
  task = _stand_in_task(lambda m, o: classification.ClassificationServingModule(
      m, o, image_size=8, resize_size=10))
  predictor = predict.KerasPredictor(model, options, task)
  assert predictor.task == "classification"
  summary = predict.predict_images(predictor, str(root), str(tmp_path), dataset_info=info,
                                   progress=False)
  assert summary["num_images"] == 2
  with open(summary["predictions_file"], encoding="utf-8") as f:
    lines = [json.loads(line) for line in f]
  assert [os.path.basename(line["image"]) for line in lines] == ["first.png", "second.png"]
  for line, name in zip(lines, ("first", "second")):
    expected = predictor(images[name][None])
    probabilities = expected["probabilities"][0]
    assert line["classes"] == expected["top_5"][0].tolist()
    assert line["classes"][0] == int(expected["classes"][0])
    np.testing.assert_allclose(line["probabilities"], probabilities[line["classes"]],
                               rtol=1e-6)
    assert line["probabilities"] == sorted(line["probabilities"], reverse=True)
    assert line["class_names"] == [info.class_names[c] for c in line["classes"]]
