"""Tiny datasets in the official on-disk layouts, built from a known panoptic truth.

Each builder returns the truth it encoded (`{image_id: int32 [h, w] panoptic map in our
encoding}`), computed here from the construction itself, never by the converter.
"""
import json
import os

import numpy as np
from PIL import Image

from deeplab_axial.data import datasets
from deeplab_axial.data import encoding


def save_png(path, array):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(array).save(path, format="PNG")


def save_jpeg(path, array):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(array).save(path, format="JPEG", quality=95)


def random_scene(rng, height, width, info, num_things=3, with_crowd=True):
  """Region index map (-1 = void) and a list of (contiguous class, is_crowd, None).

  Layout: left/right stuff halves, a void band, `num_things` thing rectangles and an
  optional crowd rectangle, painted in that order.
  """
  stuff = list(info.stuff_class_ids)
  things = list(info.thing_class_ids)
  label = np.full((height, width), -1, np.int32)
  regions = []
  left, right = rng.choice(stuff, 2, replace=False)
  regions.append((int(left), False, None))
  regions.append((int(right), False, None))
  label[:, : width // 2] = 0
  label[:, width // 2:] = 1
  label[0, :] = -1  # void row
  for _ in range(num_things):
    y0, x0 = rng.integers(1, height - 3), rng.integers(0, width - 3)
    label[y0:y0 + rng.integers(2, 4), x0:x0 + rng.integers(2, 5)] = len(regions)
    regions.append((int(rng.choice(things)), False, None))
  if with_crowd:
    label[height - 2:, :3] = len(regions)
    regions.append((int(things[0]), True, None))
  return label, regions


def truth_panoptic(label, regions, info):
  """Our encoding of a scene: instances numbered per class in region order."""
  panoptic = np.full(label.shape, info.ignore_label * info.label_divisor, np.int32)
  counters = {}
  for index, (cls, crowd, _) in enumerate(regions):
    mask = label == index
    if not mask.any():
      continue
    instance = 0
    if cls in info.thing_class_ids and not crowd:
      instance = counters.get(cls, 0) + 1
      counters[cls] = instance
    panoptic[mask] = cls * info.label_divisor + instance
  return panoptic


def coco_segments(label, regions, info, rng, segment_id_of=None):
  """COCO-format segment id map + segments_info for a scene."""
  segment_ids = np.zeros(label.shape, np.int32)
  segments = []
  for index, (cls, crowd, _) in enumerate(regions):
    mask = label == index
    if not mask.any():
      continue
    segment_id = (segment_id_of(index, cls) if segment_id_of
                  else int(rng.integers(1, 256**3 - 1)))
    segment_ids[mask] = segment_id
    segments.append({"id": segment_id, "category_id": info.official_category_ids[cls],
                     "iscrowd": int(crowd), "area": int(mask.sum()), "bbox": [0, 0, 1, 1]})
  return segment_ids, segments


def make_coco(root, split="val", num_images=3, size=(12, 16), seed=0, image_format="jpg",
              info=None):
  """COCO panoptic 2017 layout; returns {image_id (str): truth panoptic}.

  `info` (default `coco_panoptic`) supplies the categories; it needs two stuff classes.
  """
  info = info or datasets.get_dataset_info("coco_panoptic")
  rng = np.random.default_rng(seed)
  images, annotations, truth = [], [], {}
  for index in range(num_images):
    image_id = 1000 + index
    label, regions = random_scene(rng, *size, info)
    segment_ids, segments = coco_segments(label, regions, info, rng)
    name = f"{image_id:012d}"
    pixels = rng.integers(0, 256, size + (3,), dtype=np.uint8)
    image_path = os.path.join(root, f"{split}2017", f"{name}.{image_format}")
    (save_jpeg if image_format == "jpg" else save_png)(image_path, pixels)
    save_png(os.path.join(root, "annotations", f"panoptic_{split}2017", f"{name}.png"),
             encoding.id_to_rgb(segment_ids))
    images.append({"id": image_id, "file_name": f"{name}.{image_format}",
                   "height": size[0], "width": size[1]})
    annotations.append({"image_id": image_id, "file_name": f"{name}.png",
                        "segments_info": segments})
    truth[str(image_id)] = truth_panoptic(label, regions, info)
  categories = [{"id": cid, "name": n, "isthing": int(i in info.thing_class_ids)}
                for i, (cid, n) in enumerate(zip(info.official_category_ids,
                                                 info.class_names))]
  write_json(os.path.join(root, "annotations", f"panoptic_{split}2017.json"),
             {"images": images, "annotations": annotations, "categories": categories})
  return truth


def write_json(path, content):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    json.dump(content, f)


def read_json(path):
  with open(path) as f:
    return json.load(f)


def make_cityscapes(root, split="val", size=(8, 12), seed=0):
  """Cityscapes gtFine *_instanceIds.png, then cityscapesscripts' own createPanopticImgs.

  Returns {image_id: truth panoptic} with train ids and label_divisor 1000.
  """
  from cityscapesscripts.preparation import createPanopticImgs  # pylint: disable=import-outside-toplevel
  info = datasets.get_dataset_info("cityscapes_panoptic")
  rng = np.random.default_rng(seed)
  truth = {}
  for city, frame in (("aachen", 19), ("bochum", 42)):
    image_id = f"{city}_000000_{frame:06d}"
    label, regions = random_scene(rng, *size, info)
    # Cityscapes instanceIds: label_id*1000 + k for instances, label_id for stuff/crowd,
    # 0 ("unlabeled", ignored in eval) for void.
    instance_ids = np.zeros(size, np.int32)
    counters = {}
    for index, (cls, crowd, _) in enumerate(regions):
      mask = label == index
      label_id = info.official_category_ids[cls]
      if cls in info.thing_class_ids and not crowd:
        counters[label_id] = counters.get(label_id, -1) + 1
        instance_ids[mask] = label_id * 1000 + counters[label_id]
      else:
        instance_ids[mask] = label_id
    gt_dir = os.path.join(root, "gtFine", split, city)
    os.makedirs(gt_dir, exist_ok=True)
    Image.fromarray(instance_ids.astype(np.uint16)).save(
        os.path.join(gt_dir, f"{image_id}_gtFine_instanceIds.png"))
    save_png(os.path.join(root, "leftImg8bit", split, city, f"{image_id}_leftImg8bit.png"),
             rng.integers(0, 256, size + (3,), dtype=np.uint8))
    truth[image_id] = _cityscapes_truth(instance_ids, info)
  createPanopticImgs.convert2panoptic(os.path.join(root, "gtFine"), None, False, [split])
  return truth


def _cityscapes_truth(instance_ids, info):
  """Our encoding of an instanceIds map, instances numbered by increasing instanceId."""
  to_class = info.official_to_contiguous()
  panoptic = np.full(instance_ids.shape, info.ignore_label * info.label_divisor, np.int32)
  counters = {}
  for value in np.unique(instance_ids):  # increasing, like createPanopticImgs' segments
    label_id = value // 1000 if value >= 1000 else value
    if label_id not in to_class:
      continue
    cls = to_class[label_id]
    instance = 0
    if value >= 1000:
      instance = counters.get(cls, 0) + 1
      counters[cls] = instance
    panoptic[instance_ids == value] = cls * info.label_divisor + instance
  return panoptic


def make_vistas(root, version="v1.2", split="validation", size=(10, 14), seed=0,
                categories=None):
  """Mapillary Vistas v2.0-release layout. Returns {image_id: truth}, DatasetInfo."""
  if categories is None:
    info = datasets.get_dataset_info("mapillary_vistas")
  else:
    info = datasets.dataset_info_from_panoptic_categories("vistas_fixture", categories)
  rng = np.random.default_rng(seed)
  folder = os.path.join(root, split, version, "panoptic")
  images, annotations, truth = [], [], {}
  for index in range(2):
    image_id = f"img{index:02d}"
    label, regions = random_scene(rng, *size, info)
    segment_ids, segments = coco_segments(label, regions, info, rng)
    save_jpeg(os.path.join(root, split, "images", f"{image_id}.jpg"),
              rng.integers(0, 256, size + (3,), dtype=np.uint8))
    save_png(os.path.join(folder, f"{image_id}.png"), encoding.id_to_rgb(segment_ids))
    images.append({"id": image_id, "file_name": f"{image_id}.jpg", "height": size[0],
                   "width": size[1]})
    annotations.append({"image_id": image_id, "file_name": f"{image_id}.png",
                        "segments_info": segments})
    truth[image_id] = truth_panoptic(label, regions, info)
  json_name = {"v1.2": "panoptic_2018.json", "v2.0": "panoptic_2020.json"}[version]
  write_json(os.path.join(folder, json_name),
             {"images": images, "annotations": annotations,
              "categories": categories or []})
  return truth, info


def make_imagenet(root, synsets, per_class=2, size=(20, 30), seed=0, flat_val=False):
  """train/{synset}/*.JPEG (and val/ flat with a labels file). Returns [(path, synset)]."""
  rng = np.random.default_rng(seed)
  written = []
  for synset in synsets:
    for index in range(per_class):
      path = os.path.join(root, "train", synset, f"{synset}_{index}.JPEG")
      save_jpeg(path, rng.integers(0, 256, size + (3,), dtype=np.uint8))
      written.append((path, synset))
  if flat_val:
    lines = []
    for index, synset in enumerate(synsets, start=1):
      path = os.path.join(root, "val", f"ILSVRC2012_val_{index:08d}.JPEG")
      save_jpeg(path, rng.integers(0, 256, size + (3,), dtype=np.uint8))
      lines.append(synset)
    with open(os.path.join(root, "val_labels.txt"), "w") as f:
      f.write("\n".join(lines) + "\n")
  return written
