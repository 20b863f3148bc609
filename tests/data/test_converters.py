"""Converters: official on-disk fixtures -> TFRecords -> decode_example, exactly."""
import glob
import json
import os

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

from deeplab_axial import progress
from deeplab_axial.data import datasets
from deeplab_axial.data import encoding
from deeplab_axial.data import pipeline
from deeplab_axial.data.converters import cityscapes
from deeplab_axial.data.converters import coco
from deeplab_axial.data.converters import common
from deeplab_axial.data.converters import imagenet
from deeplab_axial.data.converters import mapillary

from tests.data import data_fixtures as fixtures


def read_back(output_dir, split):
  """{image_id: decoded example as NumPy} from every shard of `split`."""
  files = sorted(glob.glob(common.file_pattern(output_dir, split)))
  result = {}
  for record in tf.data.TFRecordDataset(files):
    example = {k: v.numpy() for k, v in pipeline.decode_example(record).items()}
    result[example["image_id"].decode()] = example
  return result


def test_coco_round_trip_is_exact(tmp_path):
  truth = fixtures.make_coco(str(tmp_path / "coco"), num_images=3, image_format="png")
  manifest = coco.convert_coco(str(tmp_path / "coco"), str(tmp_path / "out"), "val",
                               num_shards=2, show_progress=False)
  assert manifest["num_examples"] == 3 and manifest["complete"]
  examples = read_back(str(tmp_path / "out"), "val")
  assert sorted(examples) == sorted(truth)
  for image_id, expected in truth.items():
    example = examples[image_id]
    np.testing.assert_array_equal(example["panoptic"], expected)
    assert example["label_divisor"] == 256 and example["ignore_label"] == 255
    # PNG images are stored untouched: pixels equal the fixture's file.
    source = tmp_path / "coco" / "val2017" / f"{int(image_id):012d}.png"
    np.testing.assert_array_equal(example["image"], np.asarray(Image.open(source)))
  info = datasets.dataset_info_from_json(str(tmp_path / "out" / "dataset_info.json"))
  assert info.label_divisor == 256 and info.num_classes == 133


def test_cityscapes_round_trip_through_cityscapesscripts(tmp_path):
  pytest.importorskip("cityscapesscripts")
  truth = fixtures.make_cityscapes(str(tmp_path / "cs"))
  cityscapes.convert_cityscapes(str(tmp_path / "cs"), str(tmp_path / "out"), "val",
                                num_shards=1, show_progress=False)
  examples = read_back(str(tmp_path / "out"), "val")
  assert sorted(examples) == sorted(truth)
  for image_id, expected in truth.items():
    np.testing.assert_array_equal(examples[image_id]["panoptic"], expected)
    assert examples[image_id]["label_divisor"] == 1000


@pytest.mark.parametrize("version", ["v1.2", "v2.0"])
def test_mapillary_round_trip(tmp_path, version):
  categories = None
  if version == "v2.0":
    categories = [{"id": i, "name": f"class{i}", "isthing": int(i % 3 == 0)}
                  for i in range(1, 11)]
  truth, info = fixtures.make_vistas(str(tmp_path / "mv"), version=version,
                                     categories=categories)
  mapillary.convert_mapillary(str(tmp_path / "mv"), str(tmp_path / "out"), "val",
                              version=version, num_shards=1, show_progress=False)
  examples = read_back(str(tmp_path / "out"), "validation")
  for image_id, expected in truth.items():
    np.testing.assert_array_equal(examples[image_id]["panoptic"], expected)
  written = datasets.dataset_info_from_json(str(tmp_path / "out" / "dataset_info.json"))
  assert written.thing_class_ids == info.thing_class_ids
  assert written.num_classes == (65 if version == "v1.2" else 10)


def test_imagenet_folders_and_flat_val(tmp_path):
  synsets = datasets.imagenet_synsets()
  chosen = [synsets[0], synsets[500], synsets[999]]
  fixtures.make_imagenet(str(tmp_path / "in"), chosen, flat_val=True)
  imagenet.convert_imagenet(str(tmp_path / "in"), str(tmp_path / "out"), "train",
                            num_shards=2, show_progress=False)
  imagenet.convert_imagenet(str(tmp_path / "in"), str(tmp_path / "out"), "val",
                            num_shards=1, show_progress=False,
                            val_labels_file=str(tmp_path / "in" / "val_labels.txt"))
  train = read_back(str(tmp_path / "out"), "train")
  assert {k: int(v["label"]) for k, v in train.items()} == {
      f"{s}_{i}": synsets.index(s) for s in chosen for i in range(2)}
  val = read_back(str(tmp_path / "out"), "val")
  assert [int(val[f"ILSVRC2012_val_{i:08d}"]["label"]) for i in (1, 2, 3)] == [0, 500, 999]


# --- validation errors -------------------------------------------------------------------


@pytest.fixture
def coco_root(tmp_path):
  fixtures.make_coco(str(tmp_path / "coco"), num_images=3, image_format="jpg")
  return tmp_path / "coco"


def _annotation_json(root):
  return root / "annotations" / "panoptic_val2017.json"


def _convert(root, out, **kwargs):
  return coco.convert_coco(str(root), str(out), "val", num_shards=1, num_workers=1,
                           show_progress=False, **kwargs)


def _break_missing_image(root):
  path = root / "val2017" / "000000001001.jpg"
  os.remove(path)
  return str(path)


def _break_size_mismatch(root):
  path = root / "annotations" / "panoptic_val2017" / "000000001001.png"
  Image.fromarray(np.zeros((5, 5, 3), np.uint8)).save(path)
  return str(path)


def _break_unknown_segment(root):
  path = root / "annotations" / "panoptic_val2017" / "000000001001.png"
  ids = encoding.rgb_to_id(np.asarray(Image.open(path)))
  ids[3, 3] = 4242  # not in segments_info
  Image.fromarray(encoding.id_to_rgb(ids)).save(path)
  return "4242"


def _break_unknown_category(root):
  data = fixtures.read_json(_annotation_json(root))
  data["annotations"][1]["segments_info"][0]["category_id"] = 12  # no COCO category 12
  fixtures.write_json(_annotation_json(root), data)
  return "category_id 12"


def _break_corrupt_png(root):
  path = root / "annotations" / "panoptic_val2017" / "000000001001.png"
  path.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
  return str(path)


def _break_corrupt_jpeg(root):
  path = root / "val2017" / "000000001001.jpg"
  path.write_bytes(path.read_bytes()[:40])
  return str(path)


@pytest.mark.parametrize("breaker", [
    _break_missing_image, _break_size_mismatch, _break_unknown_segment,
    _break_unknown_category, _break_corrupt_png, _break_corrupt_jpeg])
def test_bad_example_raises_naming_the_problem_and_leaves_nothing(coco_root, tmp_path,
                                                                    breaker):
  expected_in_message = breaker(coco_root)
  out = tmp_path / "out"
  with pytest.raises(common.ConversionError) as error:
    _convert(coco_root, out)
  assert expected_in_message in str(error.value)
  leftovers = [p for p in os.listdir(out) if p.endswith(".tfrecord") or p.endswith(".tmp")]
  assert leftovers == []

  manifest = _convert(coco_root, tmp_path / "skipped", skip_bad_examples=True)
  assert manifest["num_examples"] == 2
  assert len(manifest["bad_examples"]) == 1
  assert expected_in_message in manifest["bad_examples"][0]["error"]
  assert sorted(read_back(str(tmp_path / "skipped"), "val")) == ["1000", "1002"]


def test_annotation_for_unlisted_image_is_reported(coco_root, tmp_path):
  data = fixtures.read_json(_annotation_json(coco_root))
  data["images"] = data["images"][1:]
  fixtures.write_json(_annotation_json(coco_root), data)
  with pytest.raises(common.ConversionError, match="missing image for annotation"):
    _convert(coco_root, tmp_path / "out")


def test_missing_annotation_file_names_it(tmp_path):
  with pytest.raises(FileNotFoundError, match="panoptic_val2017.json"):
    _convert(tmp_path, tmp_path / "out")


# --- sharding and resume -----------------------------------------------------------------


def test_shards_hold_contiguous_slices_and_resume_skips_finished(tmp_path):
  tasks = [str(i).encode() for i in range(10)]
  calls = []

  def process(task):
    calls.append(task)
    return task

  out = str(tmp_path / "out")
  common.write_sharded_tfrecords(tasks, process, output_dir=out, split="s", num_shards=3,
                                 num_workers=2, show_progress=False)
  shards = [[r.numpy() for r in tf.data.TFRecordDataset(common.shard_path(out, "s", i, 3))]
            for i in range(3)]
  assert shards == [tasks[0:3], tasks[3:6], tasks[6:10]]

  # Delete shard 1, leave a partial temporary of shard 2 and make shard 0 unreadable to
  # prove it is not rewritten.
  os.remove(common.shard_path(out, "s", 1, 3))
  marker = os.path.getmtime(common.shard_path(out, "s", 0, 3))
  with open(common.temporary_path(common.shard_path(out, "s", 2, 3)), "wb") as f:
    f.write(b"partial")
  manifest = json.load(open(common.manifest_path(out, "s")))
  del manifest["shards"]["00002"]  # as if the run died before shard 2 finished
  json.dump(manifest, open(common.manifest_path(out, "s"), "w"))
  calls.clear()
  manifest = common.write_sharded_tfrecords(tasks, process, output_dir=out, split="s",
                                            num_shards=3, num_workers=1,
                                            show_progress=False)
  assert sorted(calls) == sorted(tasks[3:10])
  assert os.path.getmtime(common.shard_path(out, "s", 0, 3)) == marker
  assert manifest["num_examples"] == 10
  assert not [p for p in os.listdir(out) if p.endswith(".tmp")]
  assert [r.numpy() for r in tf.data.TFRecordDataset(common.shard_path(out, "s", 2, 3))] \
      == tasks[6:10]


def test_resume_with_different_input_is_refused(tmp_path):
  out = str(tmp_path / "out")
  common.write_sharded_tfrecords([b"a", b"b"], lambda t: t, output_dir=out, split="s",
                                 num_shards=1, show_progress=False)
  with pytest.raises(ValueError, match="records a conversion of 2 examples"):
    common.write_sharded_tfrecords([b"a"], lambda t: t, output_dir=out, split="s",
                                   num_shards=1, show_progress=False)


def test_progress_bar_reports_count_and_eta():
  import io  # pylint: disable=import-outside-toplevel
  stream = io.StringIO()
  bar = progress.ProgressBar(4, "train", stream=stream, min_interval=0.0)
  bar.update(2)
  bar.close()
  text = stream.getvalue()
  assert "train: 2/4" in text and "50.0%" in text and "ETA" in text
