"""Cityscapes panoptic -> TFRecords.

Expected layout under `input_dir` (the Cityscapes root), as produced by cityscapesscripts'
`createPanopticImgs` (run it once; it reads gtFine/*/*_instanceIds.png):
  leftImg8bit/{split}/{city}/{image_id}_leftImg8bit.png
  gtFine/cityscapes_panoptic_{split}.json          category ids = Cityscapes label ids
  gtFine/cityscapes_panoptic_{split}/*_panoptic.png
or the `--use-train-id` variant `gtFine/cityscapes_panoptic_{split}_trainId.json` (+ folder),
whose category ids are already train ids; the label-id files are preferred when both exist.
Label ids map to the 19 train ids (things = train ids 11-18), label_divisor 1000.
"""
import os
from typing import Dict, List, Optional, Tuple

import tensorflow as tf

from deeplab_axial.data import datasets
from deeplab_axial.data.converters import coco
from deeplab_axial.data.converters import common

SPLITS = ("train", "val")


def _annotation_files(input_dir: str, split: str) -> Tuple[str, str, bool]:
  """(json path, PNG folder, uses train ids) of the panoptic annotations of `split`."""
  gt_dir = os.path.join(input_dir, "gtFine")
  for suffix, uses_train_ids in (("", False), ("_trainId", True)):
    json_path = os.path.join(gt_dir, f"cityscapes_panoptic_{split}{suffix}.json")
    if tf.io.gfile.exists(json_path):
      return json_path, os.path.join(gt_dir, f"cityscapes_panoptic_{split}{suffix}"), \
          uses_train_ids
  raise FileNotFoundError(
      f"no Cityscapes panoptic annotations for split {split!r}: expected {gt_dir}/"
      f"cityscapes_panoptic_{split}.json (run cityscapesscripts' createPanopticImgs "
      f"--dataset-folder {gt_dir})")


def _image_path(input_dir: str, split: str, image_id: str) -> str:
  city = image_id.split("_")[0]
  return os.path.join(input_dir, "leftImg8bit", split, city, f"{image_id}_leftImg8bit.png")


def cityscapes_tasks(input_dir: str, split: str
                     ) -> Tuple[List[coco.PanopticTask], Dict[int, int]]:
  """Tasks of one split and the category id -> train id map its JSON needs."""
  common.check_split(split, SPLITS)
  json_path, label_dir, uses_train_ids = _annotation_files(input_dir, split)
  data = coco.load_json(json_path)
  info = datasets.get_dataset_info("cityscapes_panoptic")
  category_to_class = ({i: i for i in range(info.num_classes)} if uses_train_ids
                       else info.official_to_contiguous())
  # createPanopticImgs writes a wrong image file name (it keeps "_gtFine"), so the image
  # path is derived from the image id instead.
  tasks = coco.panoptic_tasks(
      data, json_path, image_path=lambda image: _image_path(input_dir, split, str(image["id"])),
      label_dir=label_dir)
  return tasks, category_to_class


def convert_cityscapes(input_dir: str, output_dir: str, split: str, *, num_shards: int = 10,
                       num_workers: int = 2, skip_bad_examples: bool = False,
                       show_progress: bool = True,
                       dataset_info: Optional[datasets.DatasetInfo] = None) -> Dict:
  """Converts one Cityscapes panoptic split; returns the manifest."""
  dataset_info = dataset_info or datasets.get_dataset_info("cityscapes_panoptic")
  tasks, category_to_class = cityscapes_tasks(input_dir, split)
  return coco.convert_panoptic_tasks(
      tasks, dataset_info, output_dir=output_dir, split=split, num_shards=num_shards,
      num_workers=num_workers, skip_bad_examples=skip_bad_examples,
      category_to_class=category_to_class, show_progress=show_progress)


__all__ = ["cityscapes_tasks", "convert_cityscapes"]
