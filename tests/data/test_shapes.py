"""The procedural shapes dataset: determinism, COCO-format consistency, caching."""
import json
import os

import numpy as np
from PIL import Image
import pytest

from deeplab_axial.data import datasets
from deeplab_axial.data import encoding
from deeplab_axial.data.converters import shapes

SMALL = shapes.ShapesConfig(image_size=(32, 40), num_train=6, num_val=2, seed=3)


def test_generator_is_deterministic_per_seed():
  first = shapes.render_image(SMALL, "train", 4)
  again = shapes.render_image(SMALL, "train", 4)
  other = shapes.render_image(shapes.ShapesConfig(seed=4, image_size=(32, 40)), "train", 4)
  np.testing.assert_array_equal(first[0], again[0])
  np.testing.assert_array_equal(first[1], again[1])
  assert first[2] == again[2]
  assert not np.array_equal(first[0], other[0])


def test_raw_dataset_is_consistent_coco_panoptic(tmp_path):
  root = shapes.generate_shapes_dataset(str(tmp_path / "raw"), SMALL)
  data = json.load(open(os.path.join(root, "annotations", "panoptic_train2017.json")))
  assert len(data["images"]) == 6
  things = {c["id"] for c in data["categories"] if c["isthing"]}
  assert {c["name"] for c in data["categories"]} == {
      row[1] for row in datasets.SHAPES_CLASSES}
  for annotation in data["annotations"]:
    png = np.asarray(Image.open(os.path.join(root, "annotations", "panoptic_train2017",
                                             annotation["file_name"])))
    ids = encoding.rgb_to_id(png)
    segments = {s["id"]: s for s in annotation["segments_info"]}
    present, counts = np.unique(ids, return_counts=True)
    assert set(present.tolist()) == set(segments)  # every pixel labelled, no extra ids
    for segment_id, count in zip(present, counts):
      assert segments[segment_id]["area"] == count
    assert any(s["category_id"] in things for s in segments.values())
    image = np.asarray(Image.open(os.path.join(root, "train2017", annotation["file_name"])))
    assert image.shape == (32, 40, 3)


def test_ensure_shapes_tfrecords_caches_and_checks_settings(tmp_path):
  out = str(tmp_path / "shapes")
  kwargs = dict(image_size=(32, 32), num_train=4, num_val=2, seed=0, num_shards=1)
  patterns = shapes.ensure_shapes_tfrecords(out, **kwargs)
  shard = os.path.join(out, "train-00000-of-00001.tfrecord")
  assert os.path.exists(shard) and patterns["train"].endswith("train-*-of-*.tfrecord")
  stamp = os.path.getmtime(shard)
  assert shapes.ensure_shapes_tfrecords(out, **kwargs) == patterns
  assert os.path.getmtime(shard) == stamp
  with pytest.raises(ValueError, match="holds a shapes dataset made with"):
    shapes.ensure_shapes_tfrecords(out, **dict(kwargs, num_train=5))
