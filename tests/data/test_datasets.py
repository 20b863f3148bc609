"""Dataset descriptors against the official class lists."""
import numpy as np
import pytest

from deeplab_axial.data import datasets


def test_unknown_name_lists_known_datasets():
  with pytest.raises(ValueError) as error:
    datasets.get_dataset_info("pascal")
  for name in ("coco_panoptic", "cityscapes_panoptic", "mapillary_vistas", "imagenet",
               "shapes"):
    assert name in str(error.value)


def test_coco_panoptic_constants():
  info = datasets.get_dataset_info("coco_panoptic")
  assert (info.num_classes, info.label_divisor, info.ignore_label) == (133, 256, 255)
  assert info.thing_class_ids == tuple(range(80))
  ids = info.official_category_ids
  assert ids[:3] == (1, 2, 3) and ids[79] == 90 and ids[80] == 92 and ids[-1] == 200
  assert list(ids) == sorted(ids) and len(set(ids)) == 133
  # Category ids absent from COCO 2017 panoptic.
  assert not {12, 26, 29, 30, 45, 66, 68, 69, 71, 83, 91} & set(ids)
  assert info.class_names[0] == "person" and info.class_names[-1] == "rug-merged"
  assert info.official_to_contiguous()[200] == 132
  assert info.colormap.shape == (133, 3) and info.colormap.dtype == np.uint8


def test_cityscapes_matches_cityscapesscripts():
  labels = pytest.importorskip("cityscapesscripts.helpers.labels")
  info = datasets.get_dataset_info("cityscapes_panoptic")
  by_train_id = {l.trainId: l for l in labels.labels if 0 <= l.trainId < 255}
  assert info.num_classes == 19 and info.label_divisor == 1000 and info.ignore_label == 255
  for train_id in range(19):
    label = by_train_id[train_id]
    assert info.class_names[train_id] == label.name
    assert info.official_category_ids[train_id] == label.id
    assert tuple(info.colormap[train_id]) == label.color
    assert info.class_has_instances[train_id] == label.hasInstances
  assert info.thing_class_ids == tuple(range(11, 19))


def test_mapillary_vistas_v12():
  info = datasets.get_dataset_info("mapillary_vistas")
  assert info.num_classes == 65 and len(info.thing_class_ids) == 37
  assert info.official_category_ids == tuple(range(1, 66))
  assert len(info.stuff_class_ids) == 28


def test_imagenet_synsets():
  info = datasets.get_dataset_info("imagenet")
  assert info.num_classes == 1000 and info.task == "classification"
  assert info.class_names[0] == "n01440764" and list(info.class_names) == sorted(
      info.class_names)


def test_descriptor_from_categories_and_json_round_trip(tmp_path):
  categories = [{"id": 9, "name": "b", "isthing": 0}, {"id": 3, "name": "a", "isthing": 1,
                                                        "color": [1, 2, 3]}]
  info = datasets.dataset_info_from_panoptic_categories("mine", categories,
                                                        splits={"train": 4})
  assert info.class_names == ("a", "b") and info.thing_class_ids == (0,)
  assert info.official_category_ids == (3, 9)
  assert tuple(info.colormap[0]) == (1, 2, 3)
  import json  # pylint: disable=import-outside-toplevel
  path = tmp_path / "info.json"
  path.write_text(json.dumps(info.to_json()))
  restored = datasets.dataset_info_from_json(str(path))
  assert restored == info
  np.testing.assert_array_equal(restored.colormap, info.colormap)


def test_descriptor_validation():
  with pytest.raises(ValueError, match="class_names has 1 entries"):
    datasets.DatasetInfo(name="x", num_classes=2, ignore_label=255, label_divisor=10,
                         thing_class_ids=(), class_names=("a",), colormap=np.zeros((2, 3)))
  with pytest.raises(ValueError, match="thing_class_ids \\[5\\]"):
    datasets.DatasetInfo(name="x", num_classes=2, ignore_label=255, label_divisor=10,
                         thing_class_ids=(5,), class_names=("a", "b"),
                         colormap=np.zeros((2, 3)))


def test_missing_records_message_names_the_converter_and_data_dir():
  message = datasets.missing_records_message("data_cache/coco/train-*.tfrecord")
  assert "'data_cache/coco/train-*.tfrecord' matches no files" in message
  assert ("python data/build_coco_data.py --input_dir=<dataset root> "
          "--output_dir=data_cache/coco --split=train") in message
  assert "--data_dir" in message
  unknown = datasets.missing_records_message(["/records/*.tfrecord"])
  assert "data/build_cityscapes_data.py" in unknown and "data/build_shapes_data.py" in unknown
