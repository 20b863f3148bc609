"""Mapillary Vistas panoptic (v1.2 and v2.0) -> TFRecords.

Supported layouts under `input_dir` (the extracted dataset root), split = training|validation:
  v2.0 release:  {split}/images/{image_id}.jpg
                 {split}/v1.2/panoptic/panoptic_2018.json + {split}/v1.2/panoptic/*.png
                 {split}/v2.0/panoptic/panoptic_2020.json + {split}/v2.0/panoptic/*.png
  v1.1/v1.2 release (no version folder):
                 {split}/images/*.jpg, {split}/panoptic/panoptic_2018.json + *.png
The PNGs use the COCO RGB id encoding. Version 1.2 uses the `mapillary_vistas` descriptor
(65 classes, category ids 1-65, 37 things). Version 2.0 (124 classes) has no built-in
descriptor: its classes are read from the JSON's `categories` (sorted by id) and the
resulting DatasetInfo is written to `dataset_info.json` next to the shards (load it with
`datasets.dataset_info_from_json`).
"""
import os
from typing import Dict, List, Optional, Tuple

import tensorflow as tf

from deeplab_axial.data import datasets
from deeplab_axial.data.converters import coco
from deeplab_axial.data.converters import common

SPLITS = ("training", "validation")
_SPLIT_ALIASES = {"train": "training", "val": "validation"}
_JSON_NAMES = {"v1.2": "panoptic_2018.json", "v2.0": "panoptic_2020.json"}


def _annotation_dir(input_dir: str, split: str, version: str) -> Tuple[str, str]:
  candidates = [os.path.join(input_dir, split, version, "panoptic")]
  if version == "v1.2":
    candidates.append(os.path.join(input_dir, split, "panoptic"))
  for folder in candidates:
    json_path = os.path.join(folder, _JSON_NAMES[version])
    if tf.io.gfile.exists(json_path):
      return json_path, folder
  raise FileNotFoundError(f"no Mapillary Vistas {version} panoptic annotations for split "
                          f"{split!r}: looked for "
                          f"{[os.path.join(c, _JSON_NAMES[version]) for c in candidates]}")


def mapillary_tasks(input_dir: str, split: str, version: str = "v1.2"
                    ) -> Tuple[List[coco.PanopticTask], datasets.DatasetInfo]:
  """Tasks of one split and the DatasetInfo describing its classes."""
  split = _SPLIT_ALIASES.get(split, split)
  common.check_split(split, SPLITS)
  if version not in _JSON_NAMES:
    raise ValueError(f"version must be one of {sorted(_JSON_NAMES)}, got {version!r}")
  json_path, label_dir = _annotation_dir(input_dir, split, version)
  data = coco.load_json(json_path)
  if version == "v1.2":
    info = datasets.get_dataset_info("mapillary_vistas")
  else:
    if not data.get("categories"):
      raise ValueError(f"{json_path} has no 'categories' list")
    info = datasets.dataset_info_from_panoptic_categories(
        "mapillary_vistas_v2", data["categories"], label_divisor=1000,
        splits={"training": 18000, "validation": 2000}, stuff_area=4096,
        eval_crop_size=(2177, 2177))
  image_dir = os.path.join(input_dir, split, "images")
  tasks = coco.panoptic_tasks(
      data, json_path, image_path=lambda image: os.path.join(image_dir, image["file_name"]),
      label_dir=label_dir)
  return tasks, info


def convert_mapillary(input_dir: str, output_dir: str, split: str, *, version: str = "v1.2",
                      num_shards: int = 20, num_workers: int = 2,
                      skip_bad_examples: bool = False, show_progress: bool = True,
                      dataset_info: Optional[datasets.DatasetInfo] = None) -> Dict:
  """Converts one Mapillary Vistas split; returns the manifest."""
  tasks, info = mapillary_tasks(input_dir, split, version)
  split = _SPLIT_ALIASES.get(split, split)
  return coco.convert_panoptic_tasks(
      tasks, dataset_info or info, output_dir=output_dir, split=split, num_shards=num_shards,
      num_workers=num_workers, skip_bad_examples=skip_bad_examples,
      show_progress=show_progress)


__all__ = ["convert_mapillary", "mapillary_tasks"]
