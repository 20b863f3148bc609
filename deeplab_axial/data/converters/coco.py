"""COCO panoptic format -> TFRecords (also used by the Cityscapes, Vistas and shapes converters).

COCO panoptic 2017 official layout, under `input_dir`:
  {split}2017/*.jpg                               images
  annotations/panoptic_{split}2017.json           images, annotations[segments_info], categories
  annotations/panoptic_{split}2017/*.png          segment ids, id = R + 256·G + 256²·B

Each segment becomes `contiguous_class * label_divisor + instance` where instances are
numbered per class from 1 in `segments_info` order; crowd segments (`iscrowd: 1`) of thing
classes get instance 0, stuff segments get 0, and unlabeled pixels (id 0) become
`ignore_label * label_divisor`.
"""
import dataclasses
import json
import os
from typing import Callable, Dict, List, Mapping, Optional, Sequence

import numpy as np
import tensorflow as tf

from deeplab_axial.data import datasets
from deeplab_axial.data import encoding
from deeplab_axial.data.converters import common
from deeplab_axial.data.converters.common import ConversionError

SPLITS = ("train", "val")


@dataclasses.dataclass(frozen=True)
class PanopticTask:
  """One annotated image of a COCO-format panoptic dataset."""
  image_id: str
  image_path: Optional[str]  # None when the annotation's image_id is not in `images`
  label_path: str
  segments_info: Sequence[Mapping]
  json_path: str

  def __str__(self):
    return os.path.basename(self.label_path)


def load_json(path: str) -> Dict:
  if not tf.io.gfile.exists(path):
    raise FileNotFoundError(f"annotation file {path} does not exist")
  with tf.io.gfile.GFile(path) as f:
    try:
      data = json.load(f)
    except json.JSONDecodeError as error:
      raise ValueError(f"annotation file {path} is not valid JSON: {error}") from error
  for key in ("images", "annotations"):
    if key not in data:
      raise ValueError(f"annotation file {path} has no '{key}' list (COCO panoptic format "
                       f"expected)")
  return data


def panoptic_tasks(data: Mapping, json_path: str, *, image_path: Callable[[Mapping], str],
                   label_dir: str) -> List[PanopticTask]:
  """One task per annotation, sorted by image id.

  Args:
    data: the loaded panoptic JSON.
    json_path: its path (for error messages).
    image_path: `images` entry -> path of the image file.
    label_dir: folder of the panoptic PNGs (`annotations[i].file_name`).
  """
  images = {str(image["id"]): image for image in data["images"]}
  tasks = []
  for annotation in data["annotations"]:
    image_id = str(annotation["image_id"])
    image = images.get(image_id)
    tasks.append(PanopticTask(
        image_id=image_id,
        image_path=image_path(image) if image is not None else None,
        label_path=os.path.join(label_dir, annotation["file_name"]),
        segments_info=tuple(annotation.get("segments_info", ())),
        json_path=json_path))
  return sorted(tasks, key=lambda task: task.image_id)


def segments_to_panoptic(segment_ids: np.ndarray, segments_info: Sequence[Mapping], *,
                         category_to_class: Mapping[int, int],
                         dataset_info: datasets.DatasetInfo, source: str,
                         json_path: str = "the annotation file") -> np.ndarray:
  """COCO-format segment id map + segments_info -> int32 panoptic map (our encoding).

  Args:
    segment_ids: int [h, w] segment ids decoded from the RGB PNG; 0 is unlabeled.
    segments_info: dicts with `id`, `category_id` and optional `iscrowd`.
    category_to_class: dataset category id -> contiguous class id.
    dataset_info: supplies label_divisor, ignore_label and thing ids.
    source, json_path: named in error messages.

  Raises:
    ConversionError: segment ids in the PNG missing from segments_info, unknown category
      ids, duplicate segment ids, or more instances of a class than label_divisor allows.
  """
  divisor = dataset_info.label_divisor
  things = set(dataset_info.thing_class_ids)
  segments = {}
  for segment in segments_info:
    if segment["id"] in segments:
      raise ConversionError(f"{source}: segment id {segment['id']} appears twice in "
                            f"segments_info of {json_path}")
    segments[int(segment["id"])] = segment
  unique_ids, inverse = np.unique(segment_ids, return_inverse=True)
  unknown = sorted(set(unique_ids.tolist()) - set(segments) - {0})
  if unknown:
    raise ConversionError(f"{source}: segment ids {unknown[:20]} are present in the PNG but "
                          f"not in its segments_info in {json_path}")
  present = set(unique_ids.tolist())
  values = {0: dataset_info.ignore_label * divisor}
  next_instance = {}
  for segment in segments_info:
    segment_id = int(segment["id"])
    category = int(segment["category_id"])
    if category not in category_to_class:
      raise ConversionError(
          f"{source}: segment {segment_id} has category_id {category}, which is not a "
          f"category of dataset '{dataset_info.name}' (known category ids: "
          f"{sorted(category_to_class)})")
    if segment_id not in present:
      continue
    semantic = category_to_class[category]
    instance = 0
    if semantic in things and not segment.get("iscrowd", 0):
      instance = next_instance.get(semantic, 1)
      next_instance[semantic] = instance + 1
      if instance >= divisor:
        raise ConversionError(f"{source}: more than {divisor - 1} instances of class "
                              f"{semantic}; label_divisor {divisor} is too small")
    values[segment_id] = semantic * divisor + instance
  lookup = np.array([values[i] for i in unique_ids.tolist()], np.int32)
  return lookup[inverse].reshape(segment_ids.shape)


def make_panoptic_processor(dataset_info: datasets.DatasetInfo,
                            category_to_class: Optional[Mapping[int, int]] = None
                            ) -> Callable[[PanopticTask], bytes]:
  """Returns task -> serialized Example, validating each input as documented."""
  if category_to_class is None:
    category_to_class = dataset_info.official_to_contiguous()

  def process(task: PanopticTask) -> bytes:
    if task.image_path is None:
      raise ConversionError(f"missing image for annotation {task.label_path}: image_id "
                            f"{task.image_id!r} is not listed in 'images' of {task.json_path}")
    if not tf.io.gfile.exists(task.image_path):
      raise ConversionError(f"missing image for annotation {task.label_path}: "
                            f"{task.image_path} does not exist")
    image = common.read_image(task.image_path)
    segment_ids = encoding.rgb_to_id(common.read_rgb_png(task.label_path,
                                                         purpose="panoptic PNG"))
    if segment_ids.shape != (image.height, image.width):
      raise ConversionError(
          f"size mismatch: image {task.image_path} is {image.height}x{image.width} (HxW) but "
          f"panoptic PNG {task.label_path} is {segment_ids.shape[0]}x{segment_ids.shape[1]}")
    panoptic = segments_to_panoptic(segment_ids, task.segments_info,
                                    category_to_class=category_to_class,
                                    dataset_info=dataset_info, source=task.label_path,
                                    json_path=task.json_path)
    return common.panoptic_example(image, panoptic, image_id=task.image_id,
                                   filename=task.image_path, dataset_info=dataset_info)

  return process


def convert_panoptic_tasks(tasks: Sequence[PanopticTask], dataset_info: datasets.DatasetInfo,
                           *, output_dir: str, split: str, num_shards: int,
                           num_workers: int = 2, skip_bad_examples: bool = False,
                           category_to_class: Optional[Mapping[int, int]] = None,
                           show_progress: bool = True) -> Dict:
  """Writes COCO-format panoptic tasks as sharded TFRecords; returns the manifest."""
  if not tasks:
    raise ValueError(f"no annotations found for split {split!r}")
  return common.write_sharded_tfrecords(
      tasks, make_panoptic_processor(dataset_info, category_to_class),
      output_dir=output_dir, split=split, num_shards=num_shards, num_workers=num_workers,
      skip_bad_examples=skip_bad_examples, dataset_info=dataset_info,
      show_progress=show_progress)


def coco_tasks(input_dir: str, split: str) -> List[PanopticTask]:
  """Tasks of a COCO panoptic 2017 split in the official layout."""
  common.check_split(split, SPLITS)
  json_path = os.path.join(input_dir, "annotations", f"panoptic_{split}2017.json")
  data = load_json(json_path)
  image_dir = os.path.join(input_dir, f"{split}2017")
  return panoptic_tasks(
      data, json_path, image_path=lambda image: os.path.join(image_dir, image["file_name"]),
      label_dir=os.path.join(input_dir, "annotations", f"panoptic_{split}2017"))


def custom_dataset_info(input_dir: str, split: str, name: str, *,
                        label_divisor: int = 1000) -> datasets.DatasetInfo:
  """The DatasetInfo of a bring-your-own dataset in the COCO panoptic 2017 layout.

  Classes come from the `categories` of `annotations/panoptic_{split}2017.json` (sorted
  by id; `isthing` marks things); the converters write it to `dataset_info.json`, which
  a config names in `dataset.dataset_info_file`.
  """
  json_path = os.path.join(input_dir, "annotations", f"panoptic_{split}2017.json")
  categories = load_json(json_path).get("categories")
  if not categories:
    raise ValueError(f"annotation file {json_path} has no 'categories' list; a custom "
                     f"dataset's classes come from it")
  return datasets.dataset_info_from_panoptic_categories(name, categories,
                                                        label_divisor=label_divisor)


def convert_coco(input_dir: str, output_dir: str, split: str, *, num_shards: int = 16,
                 num_workers: int = 2, skip_bad_examples: bool = False,
                 dataset_info: Optional[datasets.DatasetInfo] = None,
                 show_progress: bool = True) -> Dict:
  """Converts one COCO panoptic 2017 split; returns the manifest.

  Args:
    input_dir: the COCO root (holding `annotations/` and `{split}2017/`).
    output_dir: where the shards go.
    split: "train" or "val".
    dataset_info: defaults to `coco_panoptic`; any dataset in COCO panoptic format whose
      `official_category_ids` are the JSON category ids works (e.g. `shapes`).
  """
  dataset_info = dataset_info or datasets.get_dataset_info("coco_panoptic")
  return convert_panoptic_tasks(coco_tasks(input_dir, split), dataset_info,
                                output_dir=output_dir, split=split, num_shards=num_shards,
                                num_workers=num_workers, skip_bad_examples=skip_bad_examples,
                                show_progress=show_progress)


__all__ = ["PanopticTask", "coco_tasks", "convert_coco", "convert_panoptic_tasks",
           "custom_dataset_info",
           "load_json", "make_panoptic_processor", "panoptic_tasks", "segments_to_panoptic"]
