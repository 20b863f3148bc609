"""Writers of panoptic predictions in the official submission formats.

Both formats are the COCO panoptic *results* format: one RGB PNG per image whose pixel
colour encodes a segment id, `id = R + 256 * G + 256**2 * B` (id 0 = void, unlabelled), and
one JSON file `{"annotations": [{"image_id", "file_name", "segments_info": [{"id",
"category_id", "area", "bbox": [x, y, width, height], "iscrowd": 0}, ...]}, ...]}`.

* `CocoPanopticWriter`: ids 1, 2, ... in order of the panoptic ids of the image; file names
  `<image_id>.png` (integer ids zero-padded to 12 digits, like COCO file names).
* `CityscapesPanopticWriter`: cityscapesscripts' `createPanopticImgs.py` convention, ids
  `category_id * 1000 + instance_id` for instances and `category_id` for stuff; file names
  `<image_id>_panoptic.png`; readable by
  `cityscapesscripts.evaluation.evalPanopticSemanticLabeling.evaluatePanoptic`.

`category_map` maps the model's semantic ids (train ids) back to the dataset's category ids
(e.g. Cityscapes label ids, COCO category ids); the default is the identity. Stuff pixels
of one class form one segment whatever their instance ids; void pixels (`ignore_label`) get
id 0. Files go to `<output_dir>/<name>/` and `<output_dir>/<name>.json` (the layout the
official scripts assume by default); the JSON is written by `close()`.
"""
import json
import os

import numpy as np
from PIL import Image

from deeplab_axial.data.encoding import id_to_rgb



def _bbox(mask):
  """COCO box [x, y, width, height] of a non-empty boolean mask."""
  rows = np.flatnonzero(mask.any(axis=1))
  columns = np.flatnonzero(mask.any(axis=0))
  return [int(columns[0]), int(rows[0]), int(columns[-1] - columns[0] + 1),
          int(rows[-1] - rows[0] + 1)]


class _PanopticWriter:
  """Shared logic: segment extraction, PNG and JSON output. Subclasses choose ids/names."""

  def __init__(self, output_dir, label_divisor, ignore_label, thing_classes,
               category_map=None, name="panoptic_predictions"):
    self.label_divisor = int(label_divisor)
    self.ignore_label = int(ignore_label)
    self.thing_classes = frozenset(int(c) for c in thing_classes)
    if category_map is not None and not isinstance(category_map, dict):
      category_map = dict(enumerate(category_map))
    self.category_map = category_map
    self.json_path = os.path.join(output_dir, name + ".json")
    self.png_dir = os.path.join(output_dir, name)
    os.makedirs(self.png_dir, exist_ok=True)
    self.annotations = []

  def _category(self, semantic):
    if self.category_map is None:
      return semantic
    if semantic not in self.category_map:
      raise ValueError(f"category_map has no entry for semantic id {semantic}; it maps "
                       f"{sorted(self.category_map)}")
    return int(self.category_map[semantic])

  def _segments(self, panoptic):
    """Yields (category id, instance id or 0 for stuff, mask) per segment, void skipped."""
    semantic = panoptic // self.label_divisor
    instance = np.where(np.isin(semantic, list(self.thing_classes)),
                        panoptic % self.label_divisor, 0)
    canonical = semantic * self.label_divisor + instance
    for value in np.unique(canonical):
      category = int(value // self.label_divisor)
      if category == self.ignore_label:
        continue
      yield self._category(category), int(value % self.label_divisor), canonical == value

  def _segment_ids(self, segments):
    """Returns one output id per (category, instance, mask) of `segments`."""
    raise NotImplementedError

  def _file_name(self, image_id):
    raise NotImplementedError

  def write(self, image_id, panoptic, file_name=None):
    """Writes one image's PNG and records its JSON annotation.

    Args:
      image_id: the dataset's image id (int for COCO, "<city>_<seq>_<frame>" for Cityscapes).
      panoptic: int `[height, width]` panoptic ids, `semantic * label_divisor + instance`.
      file_name: PNG name inside the output folder; defaults to the format's convention.

    Returns:
      The annotation dict added to the JSON.
    """
    panoptic = np.asarray(panoptic)
    if panoptic.ndim != 2 or not np.issubdtype(panoptic.dtype, np.integer):
      raise ValueError(f"panoptic must be an integer [height, width] map, got shape "
                       f"{panoptic.shape} dtype {panoptic.dtype}")
    if panoptic.size and panoptic.min() < 0:
      raise ValueError(f"panoptic contains negative id {panoptic.min()} (image {image_id})")
    segments = list(self._segments(panoptic.astype(np.int64)))
    ids = self._segment_ids(segments)
    id_map = np.zeros(panoptic.shape, dtype=np.int64)
    segments_info = []
    for segment_id, (category, _, mask) in zip(ids, segments):
      id_map[mask] = segment_id
      segments_info.append({"id": int(segment_id), "category_id": category,
                            "area": int(mask.sum()), "bbox": _bbox(mask), "iscrowd": 0})
    file_name = file_name or self._file_name(image_id)
    Image.fromarray(id_to_rgb(id_map)).save(os.path.join(self.png_dir, file_name))
    annotation = {"image_id": image_id, "file_name": file_name,
                  "segments_info": segments_info}
    self.annotations.append(annotation)
    return annotation

  def close(self):
    """Writes the JSON file with every annotation written so far."""
    with open(self.json_path, "w", encoding="utf-8") as f:
      json.dump({"annotations": self.annotations}, f)

  def __enter__(self):
    return self

  def __exit__(self, *exc_info):
    self.close()


class CocoPanopticWriter(_PanopticWriter):
  """COCO panoptic results: ids numbered from 1 per image, `<image_id>.png` files.

  COCO image ids are ints; one given as a decimal string (as TFRecords and file stems
  hold them) is written as that int.
  """

  def write(self, image_id, panoptic, file_name=None):
    if isinstance(image_id, str) and image_id.isdigit():
      image_id = int(image_id)
    return super().write(image_id, panoptic, file_name)

  def _segment_ids(self, segments):
    return list(range(1, len(segments) + 1))

  def _file_name(self, image_id):
    if isinstance(image_id, (int, np.integer)):
      return f"{int(image_id):012d}.png"
    return f"{image_id}.png"


class CityscapesPanopticWriter(_PanopticWriter):
  """Cityscapes panoptic results (`*_panoptic.png`), ids as in `createPanopticImgs.py`."""

  def __init__(self, output_dir, label_divisor, ignore_label, thing_classes,
               category_map=None, name="cityscapes_panoptic_val"):
    super().__init__(output_dir, label_divisor, ignore_label, thing_classes,
                     category_map=category_map, name=name)

  def _segment_ids(self, segments):
    ids = []
    for category, instance, _ in segments:
      # Category 0 would give stuff the void id 0, and instances ids that stuff may use.
      if not 1 <= category < 1000 or instance >= 1000:
        raise ValueError(f"Cityscapes ids need category ids in [1, 1000) (map train ids with "
                         f"category_map) and instance ids < 1000, got category {category} "
                         f"instance {instance}")
      ids.append(category * 1000 + instance if instance else category)
    return ids

  def _file_name(self, image_id):
    return f"{image_id}_panoptic.png"


OFFICIAL_FORMATS = ("coco", "cityscapes")


def official_writer(output_format, output_dir, *, label_divisor, ignore_label,
                    thing_class_ids, category_ids=None, name="panoptic"):
  """A `CocoPanopticWriter` or `CityscapesPanopticWriter` (`output_format` "coco" or
  "cityscapes") writing `<output_dir>/<name>/` and `<output_dir>/<name>.json`.

  Args:
    category_ids: the dataset's own id of each semantic id (None: the semantic ids).
  """
  if output_format not in OFFICIAL_FORMATS:
    raise ValueError(f"output_format must be one of {OFFICIAL_FORMATS}, got "
                     f"{output_format!r}")
  writer_class = (CityscapesPanopticWriter if output_format == "cityscapes"
                  else CocoPanopticWriter)
  return writer_class(output_dir, label_divisor, ignore_label, thing_class_ids,
                      category_map=list(category_ids) if category_ids else None, name=name)


def writer_for_dataset(dataset_info, output_dir, name="panoptic"):
  """The official-format writer of a dataset: Cityscapes for Cityscapes, else COCO, with
  the dataset's own category ids (`dataset_info.official_category_ids`, when it has them).
  """
  output_format = "cityscapes" if dataset_info.name.startswith("cityscapes") else "coco"
  return official_writer(output_format, output_dir, label_divisor=dataset_info.label_divisor,
                         ignore_label=dataset_info.ignore_label,
                         thing_class_ids=dataset_info.thing_class_ids,
                         category_ids=dataset_info.official_category_ids, name=name)
