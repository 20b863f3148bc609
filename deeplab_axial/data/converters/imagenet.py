"""ImageNet (ILSVRC-2012) classification -> TFRecords.

Supported layouts under `input_dir`:
  train/{synset}/*.JPEG                     training images, one folder per synset
  val/{synset}/*.JPEG                       validation sorted into synset folders, or
  val/ILSVRC2012_val_XXXXXXXX.JPEG          the flat official validation folder, labelled by
                                            `val_labels_file` (one synset per line, line i
                                            for image i; default: the list shipped with
                                            tensorflow_datasets), or lines "file synset".
Labels are indices into the sorted list of the 1000 synsets (`get_dataset_info("imagenet")`).
The tensorflow_datasets `imagenet2012` tar archives are not read: extract them first.
"""
import dataclasses
import os
import re
from typing import Dict, List, Optional

import tensorflow as tf

from deeplab_axial.data import datasets
from deeplab_axial.data.converters import common

SPLITS = ("train", "val")
_IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")
_VAL_INDEX = re.compile(r"ILSVRC2012_val_(\d+)\.", re.IGNORECASE)


@dataclasses.dataclass(frozen=True)
class ClassificationTask:
  image_path: str
  synset: str

  def __str__(self):
    return self.image_path


def _images_in(folder: str) -> List[str]:
  return sorted(name for name in tf.io.gfile.listdir(folder)
                if name.lower().endswith(_IMAGE_SUFFIXES))


def _default_val_labels() -> List[str]:
  return datasets.tfds_resource_lines("validation_labels.txt")


def _flat_val_tasks(val_dir: str, names: List[str], labels_file: Optional[str]
                    ) -> List[ClassificationTask]:
  if labels_file is None:
    by_index = _default_val_labels()
    by_name = {}
  else:
    if not tf.io.gfile.exists(labels_file):
      raise FileNotFoundError(f"val_labels_file {labels_file} does not exist")
    with tf.io.gfile.GFile(labels_file) as f:
      rows = [line.split() for line in f.read().splitlines() if line.strip()]
    by_name = {row[0]: row[1] for row in rows if len(row) == 2}
    by_index = [row[0] for row in rows if len(row) == 1]
  tasks = []
  for name in names:
    if name in by_name:
      synset = by_name[name]
    else:
      match = _VAL_INDEX.search(name)
      if match is None or not 1 <= int(match.group(1)) <= len(by_index):
        raise ValueError(f"no label for validation image {os.path.join(val_dir, name)} in "
                         f"{labels_file or 'the tensorflow_datasets validation labels'}")
      synset = by_index[int(match.group(1)) - 1]
    tasks.append(ClassificationTask(os.path.join(val_dir, name), synset))
  return tasks


def imagenet_tasks(input_dir: str, split: str, *, val_labels_file: Optional[str] = None
                   ) -> List[ClassificationTask]:
  common.check_split(split, SPLITS)
  split_dir = os.path.join(input_dir, split)
  if not tf.io.gfile.isdir(split_dir):
    raise FileNotFoundError(f"ImageNet {split} folder {split_dir} does not exist")
  known = set(datasets.imagenet_synsets())
  folders = sorted(name.rstrip("/") for name in tf.io.gfile.listdir(split_dir)
                   if tf.io.gfile.isdir(os.path.join(split_dir, name)))
  if folders:
    unknown = [name for name in folders if name not in known]
    if unknown:
      raise ValueError(f"folders {unknown[:10]} in {split_dir} are not ILSVRC-2012 synsets")
    return [ClassificationTask(os.path.join(split_dir, synset, name), synset)
            for synset in folders for name in _images_in(os.path.join(split_dir, synset))]
  if split == "train":
    raise ValueError(f"{split_dir} holds no synset folders (expected train/n01440764/...)")
  return _flat_val_tasks(split_dir, _images_in(split_dir), val_labels_file)


def convert_imagenet(input_dir: str, output_dir: str, split: str, *, num_shards: int = 128,
                     num_workers: int = 2, skip_bad_examples: bool = False,
                     val_labels_file: Optional[str] = None, show_progress: bool = True) -> Dict:
  """Converts one ImageNet split; returns the manifest."""
  info = datasets.get_dataset_info("imagenet")
  label_of = {synset: index for index, synset in enumerate(info.class_names)}
  tasks = imagenet_tasks(input_dir, split, val_labels_file=val_labels_file)
  if not tasks:
    raise ValueError(f"no images found for ImageNet split {split!r} in {input_dir}")

  def process(task: ClassificationTask) -> bytes:
    if task.synset not in label_of:
      raise common.ConversionError(f"{task.image_path}: unknown synset {task.synset!r}")
    image = common.read_image(task.image_path)
    return common.classification_example(
        image, label_of[task.synset], class_name=task.synset,
        image_id=os.path.splitext(os.path.basename(task.image_path))[0],
        filename=task.image_path, dataset_info=info)

  return common.write_sharded_tfrecords(
      tasks, process, output_dir=output_dir, split=split, num_shards=num_shards,
      num_workers=num_workers, skip_bad_examples=skip_bad_examples, dataset_info=info,
      show_progress=show_progress)


__all__ = ["ClassificationTask", "convert_imagenet", "imagenet_tasks"]
