"""Dataset descriptors: the constants every other module reads instead of hard-coding.

Conventions (see docs/data.md):
  * Semantic ids are contiguous train ids `0 .. num_classes-1`, in the order of the class
    table below; `official_category_ids[i]` is the id the dataset's own files use for train
    id `i` (COCO category id, Cityscapes label id, Vistas category id).
  * `ignore_label` is 255 for every dataset; a void pixel is encoded as
    `ignore_label * label_divisor` (deeplab2 uses 0 with an extra class for COCO; we keep
    one convention everywhere).
  * `thing_class_ids` are contiguous train ids of the classes that have instances.
"""
import dataclasses
import json
import os
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from deeplab_axial import config as config_lib

IGNORE_LABEL = 255


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """Constants of one dataset.

  Attributes:
    name: registry name, e.g. "coco_panoptic".
    num_classes: number of contiguous semantic classes (or image classes).
    ignore_label: semantic id of void pixels (255).
    label_divisor: panoptic = semantic * label_divisor + instance. 0 for classification.
    thing_class_ids: contiguous ids of classes with instances.
    class_names: one name per contiguous id.
    colormap: uint8 [num_classes, 3] visualization colours.
    splits: split name -> number of examples.
    official_category_ids: contiguous id -> id used by the dataset's own files.
    stuff_area: post-processing minimum stuff segment area (pixels).
    center_threshold: post-processing centre heatmap threshold.
    nms_kernel: post-processing centre NMS max-pool kernel size.
    top_k: post-processing maximum number of centres.
    eval_crop_size: (height, width) that holds every evaluation image, k·16+1 sized.
    task: "panoptic" or "classification".
  """
  name: str
  num_classes: int
  ignore_label: int
  label_divisor: int
  thing_class_ids: Tuple[int, ...]
  class_names: Tuple[str, ...]
  colormap: np.ndarray = dataclasses.field(compare=False, repr=False)
  splits: Mapping[str, int] = dataclasses.field(default_factory=dict)
  official_category_ids: Tuple[int, ...] = ()
  stuff_area: int = 2048
  center_threshold: float = 0.1
  nms_kernel: int = 7
  top_k: int = 200
  eval_crop_size: Optional[Tuple[int, int]] = None
  task: str = "panoptic"

  def __post_init__(self):
    if len(self.class_names) != self.num_classes:
      raise ValueError(f"{self.name}: class_names has {len(self.class_names)} entries, "
                       f"expected num_classes={self.num_classes}")
    colormap = np.asarray(self.colormap, np.uint8)
    if colormap.shape != (self.num_classes, 3):
      raise ValueError(f"{self.name}: colormap must have shape [{self.num_classes}, 3], got "
                       f"{colormap.shape}")
    colormap.flags.writeable = False
    object.__setattr__(self, "colormap", colormap)
    bad = [c for c in self.thing_class_ids if not 0 <= c < self.num_classes]
    if bad:
      raise ValueError(f"{self.name}: thing_class_ids {bad} are outside [0, "
                       f"{self.num_classes})")
    if self.task == "panoptic" and not self.num_classes <= self.ignore_label:
      raise ValueError(f"{self.name}: ignore_label {self.ignore_label} collides with a class "
                       f"id (num_classes={self.num_classes})")
    if self.official_category_ids and len(self.official_category_ids) != self.num_classes:
      raise ValueError(f"{self.name}: official_category_ids has "
                       f"{len(self.official_category_ids)} entries, expected "
                       f"{self.num_classes}")

  @property
  def stuff_class_ids(self) -> Tuple[int, ...]:
    things = set(self.thing_class_ids)
    return tuple(c for c in range(self.num_classes) if c not in things)

  @property
  def class_has_instances(self) -> Tuple[bool, ...]:
    things = set(self.thing_class_ids)
    return tuple(c in things for c in range(self.num_classes))

  def official_to_contiguous(self) -> Dict[int, int]:
    """Official category id -> contiguous train id."""
    return {official: index for index, official in enumerate(self.official_category_ids)}

  def to_json(self) -> Dict:
    """A JSON-serializable dict (written next to converted TFRecords)."""
    fields = dataclasses.asdict(self)
    fields["colormap"] = self.colormap.tolist()
    fields["splits"] = dict(self.splits)
    return fields


def dataset_info_from_panoptic_categories(name: str, categories: Sequence[Mapping], *,
                                          label_divisor: int = 1000,
                                          splits: Optional[Mapping[str, int]] = None,
                                          **overrides) -> DatasetInfo:
  """Builds a DatasetInfo from a COCO-panoptic `categories` list (bring your own dataset).

  Contiguous ids follow the order of `categories` sorted by `id`.

  Args:
    name: the dataset name.
    categories: dicts with `id`, `name`, `isthing` and optionally `color` ([r, g, b]).
    label_divisor: must exceed the largest number of instances of one class in an image.
    splits: split name -> number of examples.
    **overrides: other DatasetInfo fields (stuff_area, nms_kernel, ...).
  """
  if not categories:
    raise ValueError(f"{name}: categories is empty")
  for index, category in enumerate(categories):
    missing = [key for key in ("id", "name", "isthing") if key not in category]
    if missing:
      raise ValueError(f"{name}: categories[{index}] lacks {missing}: {category}")
  ordered = sorted(categories, key=lambda c: int(c["id"]))
  return DatasetInfo(
      name=name,
      num_classes=len(ordered),
      ignore_label=IGNORE_LABEL,
      label_divisor=label_divisor,
      thing_class_ids=tuple(i for i, c in enumerate(ordered) if c["isthing"]),
      class_names=tuple(str(c["name"]) for c in ordered),
      colormap=np.array([c.get("color", _fallback_color(i)) for i, c in enumerate(ordered)],
                        np.uint8),
      splits=dict(splits or {}),
      official_category_ids=tuple(int(c["id"]) for c in ordered),
      **overrides)


def dataset_info_from_dict(fields: Mapping) -> DatasetInfo:
  """The inverse of `DatasetInfo.to_json`: a DatasetInfo from its JSON dict."""
  fields = dict(fields)
  for key in ("thing_class_ids", "class_names", "official_category_ids"):
    if key in fields:
      fields[key] = tuple(fields[key])
  if fields.get("eval_crop_size") is not None:
    fields["eval_crop_size"] = tuple(fields["eval_crop_size"])
  return DatasetInfo(**fields)


def dataset_info_from_json(path: str) -> DatasetInfo:
  """Reads a DatasetInfo written by `DatasetInfo.to_json` (e.g. `dataset_info.json`).

  Raises:
    FileNotFoundError: `path` does not exist.
    ValueError: the file is not JSON, lacks or has unknown fields, or holds values a
      DatasetInfo refuses; the message names the file.
  """
  text = _read_text_file(path)
  try:
    fields = json.loads(text)
  except json.JSONDecodeError as error:
    raise ValueError(f"{path} is not valid JSON: {error}") from None
  if not isinstance(fields, dict):
    raise ValueError(f"{path}: expected a JSON object of DatasetInfo fields, got "
                     f"{type(fields).__name__}")
  known = {field.name: field for field in dataclasses.fields(DatasetInfo)}
  required = [name for name, field in known.items()
              if field.default is dataclasses.MISSING and
              field.default_factory is dataclasses.MISSING]
  missing = [name for name in required if name not in fields]
  unknown = sorted(set(fields) - set(known))
  if missing or unknown:
    raise ValueError(f"{path} is not a DatasetInfo JSON (as the converters write): "
                     f"missing fields {missing}, unknown fields {unknown}")
  try:
    return dataset_info_from_dict(fields)
  except (TypeError, ValueError) as error:
    raise ValueError(f"{path}: invalid DatasetInfo: {error}") from None


def _read_text_file(path: str) -> str:
  if "://" in path:
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    if not tf.io.gfile.exists(path):
      raise FileNotFoundError(f"{path} does not exist")
    with tf.io.gfile.GFile(path) as f:
      return f.read()
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path} does not exist")
  with open(path, encoding="utf-8") as f:
    return f.read()


def dataset_info_from_config(dataset_options, data_dir: Optional[str] = None
                             ) -> DatasetInfo:
  """The DatasetInfo of an experiment's `dataset` options.

  `dataset.dataset_info_file` (a converter's `dataset_info.json`) when set -- a relative
  path is resolved against `data_dir` like the file patterns
  (`config.resolve_file_pattern`) -- else the descriptor registered as `dataset.name`.

  Args:
    dataset_options: the `DatasetOptions` proto of a loaded config.
    data_dir: the trainer's --data_dir (None = $DEEPLAB_AXIAL_DATA_DIR, else ./data_cache).

  Raises:
    FileNotFoundError: the file does not exist (the message names the field and path).
    ValueError: the file is invalid, `dataset.name` differs from the file's name, or an
      unknown `dataset.name`.
  """
  field = dataset_options.dataset_info_file
  if not field:
    return get_dataset_info(dataset_options.name)
  path = config_lib.resolve_file_pattern(field, data_dir)
  try:
    info = dataset_info_from_json(path)
  except FileNotFoundError:
    raise FileNotFoundError(
        f"dataset.dataset_info_file = {field!r}: {path} does not exist (relative paths are "
        f"resolved against --data_dir; the converters in data/ write dataset_info.json "
        f"next to the TFRecords)") from None
  except ValueError as error:
    raise ValueError(f"dataset.dataset_info_file = {field!r}: {error}") from None
  if dataset_options.name and dataset_options.name != info.name:
    raise ValueError(f"dataset.name = {dataset_options.name!r} differs from the name "
                     f"{info.name!r} in dataset.dataset_info_file {path}; leave dataset.name "
                     f"empty or make them equal")
  return info


def _fallback_color(index: int) -> Tuple[int, int, int]:
  """A deterministic, well-spread colour for classes that come without one."""
  golden = (index * 0.618033988749895) % 1.0
  rgb = np.array([golden, (golden + 1 / 3) % 1.0, (golden + 2 / 3) % 1.0])
  return tuple(int(v) for v in (64 + 191 * np.abs(np.sin(np.pi * rgb))))


# (official id, name, is thing, colour), in contiguous-id order. These are the official
# COCO panoptic 2017 categories (panopticapi panoptic_coco_categories.json).
_COCO_PANOPTIC_CLASSES = (
    (1, "person", 1, (220, 20, 60)),
    (2, "bicycle", 1, (119, 11, 32)),
    (3, "car", 1, (0, 0, 142)),
    (4, "motorcycle", 1, (0, 0, 230)),
    (5, "airplane", 1, (106, 0, 228)),
    (6, "bus", 1, (0, 60, 100)),
    (7, "train", 1, (0, 80, 100)),
    (8, "truck", 1, (0, 0, 70)),
    (9, "boat", 1, (0, 0, 192)),
    (10, "traffic light", 1, (250, 170, 30)),
    (11, "fire hydrant", 1, (100, 170, 30)),
    (13, "stop sign", 1, (220, 220, 0)),
    (14, "parking meter", 1, (175, 116, 175)),
    (15, "bench", 1, (250, 0, 30)),
    (16, "bird", 1, (165, 42, 42)),
    (17, "cat", 1, (255, 77, 255)),
    (18, "dog", 1, (0, 226, 252)),
    (19, "horse", 1, (182, 182, 255)),
    (20, "sheep", 1, (0, 82, 0)),
    (21, "cow", 1, (120, 166, 157)),
    (22, "elephant", 1, (110, 76, 0)),
    (23, "bear", 1, (174, 57, 255)),
    (24, "zebra", 1, (199, 100, 0)),
    (25, "giraffe", 1, (72, 0, 118)),
    (27, "backpack", 1, (255, 179, 240)),
    (28, "umbrella", 1, (0, 125, 92)),
    (31, "handbag", 1, (209, 0, 151)),
    (32, "tie", 1, (188, 208, 182)),
    (33, "suitcase", 1, (0, 220, 176)),
    (34, "frisbee", 1, (255, 99, 164)),
    (35, "skis", 1, (92, 0, 73)),
    (36, "snowboard", 1, (133, 129, 255)),
    (37, "sports ball", 1, (78, 180, 255)),
    (38, "kite", 1, (0, 228, 0)),
    (39, "baseball bat", 1, (174, 255, 243)),
    (40, "baseball glove", 1, (45, 89, 255)),
    (41, "skateboard", 1, (134, 134, 103)),
    (42, "surfboard", 1, (145, 148, 174)),
    (43, "tennis racket", 1, (255, 208, 186)),
    (44, "bottle", 1, (197, 226, 255)),
    (46, "wine glass", 1, (171, 134, 1)),
    (47, "cup", 1, (109, 63, 54)),
    (48, "fork", 1, (207, 138, 255)),
    (49, "knife", 1, (151, 0, 95)),
    (50, "spoon", 1, (9, 80, 61)),
    (51, "bowl", 1, (84, 105, 51)),
    (52, "banana", 1, (74, 65, 105)),
    (53, "apple", 1, (166, 196, 102)),
    (54, "sandwich", 1, (208, 195, 210)),
    (55, "orange", 1, (255, 109, 65)),
    (56, "broccoli", 1, (0, 143, 149)),
    (57, "carrot", 1, (179, 0, 194)),
    (58, "hot dog", 1, (209, 99, 106)),
    (59, "pizza", 1, (5, 121, 0)),
    (60, "donut", 1, (227, 255, 205)),
    (61, "cake", 1, (147, 186, 208)),
    (62, "chair", 1, (153, 69, 1)),
    (63, "couch", 1, (3, 95, 161)),
    (64, "potted plant", 1, (163, 255, 0)),
    (65, "bed", 1, (119, 0, 170)),
    (67, "dining table", 1, (0, 182, 199)),
    (70, "toilet", 1, (0, 165, 120)),
    (72, "tv", 1, (183, 130, 88)),
    (73, "laptop", 1, (95, 32, 0)),
    (74, "mouse", 1, (130, 114, 135)),
    (75, "remote", 1, (110, 129, 133)),
    (76, "keyboard", 1, (166, 74, 118)),
    (77, "cell phone", 1, (219, 142, 185)),
    (78, "microwave", 1, (79, 210, 114)),
    (79, "oven", 1, (178, 90, 62)),
    (80, "toaster", 1, (65, 70, 15)),
    (81, "sink", 1, (127, 167, 115)),
    (82, "refrigerator", 1, (59, 105, 106)),
    (84, "book", 1, (142, 108, 45)),
    (85, "clock", 1, (196, 172, 0)),
    (86, "vase", 1, (95, 54, 80)),
    (87, "scissors", 1, (128, 76, 255)),
    (88, "teddy bear", 1, (201, 57, 1)),
    (89, "hair drier", 1, (246, 0, 122)),
    (90, "toothbrush", 1, (191, 162, 208)),
    (92, "banner", 0, (255, 255, 128)),
    (93, "blanket", 0, (147, 211, 203)),
    (95, "bridge", 0, (150, 100, 100)),
    (100, "cardboard", 0, (168, 171, 172)),
    (107, "counter", 0, (146, 112, 198)),
    (109, "curtain", 0, (210, 170, 100)),
    (112, "door-stuff", 0, (92, 136, 89)),
    (118, "floor-wood", 0, (218, 88, 184)),
    (119, "flower", 0, (241, 129, 0)),
    (122, "fruit", 0, (217, 17, 255)),
    (125, "gravel", 0, (124, 74, 181)),
    (128, "house", 0, (70, 70, 70)),
    (130, "light", 0, (255, 228, 255)),
    (133, "mirror-stuff", 0, (154, 208, 0)),
    (138, "net", 0, (193, 0, 92)),
    (141, "pillow", 0, (76, 91, 113)),
    (144, "platform", 0, (255, 180, 195)),
    (145, "playingfield", 0, (106, 154, 176)),
    (147, "railroad", 0, (230, 150, 140)),
    (148, "river", 0, (60, 143, 255)),
    (149, "road", 0, (128, 64, 128)),
    (151, "roof", 0, (92, 82, 55)),
    (154, "sand", 0, (254, 212, 124)),
    (155, "sea", 0, (73, 77, 174)),
    (156, "shelf", 0, (255, 160, 98)),
    (159, "snow", 0, (255, 255, 255)),
    (161, "stairs", 0, (104, 84, 109)),
    (166, "tent", 0, (169, 164, 131)),
    (168, "towel", 0, (225, 199, 255)),
    (171, "wall-brick", 0, (137, 54, 74)),
    (175, "wall-stone", 0, (135, 158, 223)),
    (176, "wall-tile", 0, (7, 246, 231)),
    (177, "wall-wood", 0, (107, 255, 200)),
    (178, "water-other", 0, (58, 41, 149)),
    (180, "window-blind", 0, (183, 121, 142)),
    (181, "window-other", 0, (255, 73, 97)),
    (184, "tree-merged", 0, (107, 142, 35)),
    (185, "fence-merged", 0, (190, 153, 153)),
    (186, "ceiling-merged", 0, (146, 139, 141)),
    (187, "sky-other-merged", 0, (70, 130, 180)),
    (188, "cabinet-merged", 0, (134, 199, 156)),
    (189, "table-merged", 0, (209, 226, 140)),
    (190, "floor-other-merged", 0, (96, 36, 108)),
    (191, "pavement-merged", 0, (96, 96, 96)),
    (192, "mountain-merged", 0, (64, 170, 64)),
    (193, "grass-merged", 0, (152, 251, 152)),
    (194, "dirt-merged", 0, (208, 229, 228)),
    (195, "paper-merged", 0, (206, 186, 171)),
    (196, "food-other-merged", 0, (152, 161, 64)),
    (197, "building-other-merged", 0, (116, 112, 0)),
    (198, "rock-merged", 0, (0, 114, 143)),
    (199, "wall-other-merged", 0, (102, 102, 156)),
    (200, "rug-merged", 0, (250, 141, 255)),
)

# Cityscapes: (label id, name, has instances, colour) for train ids 0..18
# (cityscapesscripts helpers/labels.py).
_CITYSCAPES_CLASSES = (
    (7, "road", 0, (128, 64, 128)),
    (8, "sidewalk", 0, (244, 35, 232)),
    (11, "building", 0, (70, 70, 70)),
    (12, "wall", 0, (102, 102, 156)),
    (13, "fence", 0, (190, 153, 153)),
    (17, "pole", 0, (153, 153, 153)),
    (19, "traffic light", 0, (250, 170, 30)),
    (20, "traffic sign", 0, (220, 220, 0)),
    (21, "vegetation", 0, (107, 142, 35)),
    (22, "terrain", 0, (152, 251, 152)),
    (23, "sky", 0, (70, 130, 180)),
    (24, "person", 1, (220, 20, 60)),
    (25, "rider", 1, (255, 0, 0)),
    (26, "car", 1, (0, 0, 142)),
    (27, "truck", 1, (0, 0, 70)),
    (28, "bus", 1, (0, 60, 100)),
    (31, "train", 1, (0, 80, 100)),
    (32, "motorcycle", 1, (0, 0, 230)),
    (33, "bicycle", 1, (119, 11, 32)),
)

# Mapillary Vistas v1.2 panoptic categories (panoptic_2018.json; "Unlabeled" is void).
_MAPILLARY_VISTAS_V12_CLASSES = (
    (1, "Bird", 1, (165, 42, 42)),
    (2, "Ground Animal", 1, (0, 192, 0)),
    (3, "Curb", 0, (196, 196, 196)),
    (4, "Fence", 0, (190, 153, 153)),
    (5, "Guard Rail", 0, (180, 165, 180)),
    (6, "Barrier", 0, (90, 120, 150)),
    (7, "Wall", 0, (102, 102, 156)),
    (8, "Bike Lane", 0, (128, 64, 255)),
    (9, "Crosswalk - Plain", 1, (140, 140, 200)),
    (10, "Curb Cut", 0, (170, 170, 170)),
    (11, "Parking", 0, (250, 170, 160)),
    (12, "Pedestrian Area", 0, (96, 96, 96)),
    (13, "Rail Track", 0, (230, 150, 140)),
    (14, "Road", 0, (128, 64, 128)),
    (15, "Service Lane", 0, (110, 110, 110)),
    (16, "Sidewalk", 0, (244, 35, 232)),
    (17, "Bridge", 0, (150, 100, 100)),
    (18, "Building", 0, (70, 70, 70)),
    (19, "Tunnel", 0, (150, 120, 90)),
    (20, "Person", 1, (220, 20, 60)),
    (21, "Bicyclist", 1, (255, 0, 0)),
    (22, "Motorcyclist", 1, (255, 0, 100)),
    (23, "Other Rider", 1, (255, 0, 200)),
    (24, "Lane Marking - Crosswalk", 1, (200, 128, 128)),
    (25, "Lane Marking - General", 0, (255, 255, 255)),
    (26, "Mountain", 0, (64, 170, 64)),
    (27, "Sand", 0, (230, 160, 50)),
    (28, "Sky", 0, (70, 130, 180)),
    (29, "Snow", 0, (190, 255, 255)),
    (30, "Terrain", 0, (152, 251, 152)),
    (31, "Vegetation", 0, (107, 142, 35)),
    (32, "Water", 0, (0, 170, 30)),
    (33, "Banner", 1, (255, 255, 128)),
    (34, "Bench", 1, (250, 0, 30)),
    (35, "Bike Rack", 1, (100, 140, 180)),
    (36, "Billboard", 1, (220, 220, 220)),
    (37, "Catch Basin", 1, (220, 128, 128)),
    (38, "CCTV Camera", 1, (222, 40, 40)),
    (39, "Fire Hydrant", 1, (100, 170, 30)),
    (40, "Junction Box", 1, (40, 40, 40)),
    (41, "Mailbox", 1, (33, 33, 33)),
    (42, "Manhole", 1, (100, 128, 160)),
    (43, "Phone Booth", 1, (142, 0, 0)),
    (44, "Pothole", 0, (70, 100, 150)),
    (45, "Street Light", 1, (210, 170, 100)),
    (46, "Pole", 1, (153, 153, 153)),
    (47, "Traffic Sign Frame", 1, (128, 128, 128)),
    (48, "Utility Pole", 1, (0, 0, 80)),
    (49, "Traffic Light", 1, (250, 170, 30)),
    (50, "Traffic Sign (Back)", 1, (192, 192, 192)),
    (51, "Traffic Sign (Front)", 1, (220, 220, 0)),
    (52, "Trash Can", 1, (140, 140, 20)),
    (53, "Bicycle", 1, (119, 11, 32)),
    (54, "Boat", 1, (150, 0, 255)),
    (55, "Bus", 1, (0, 60, 100)),
    (56, "Car", 1, (0, 0, 142)),
    (57, "Caravan", 1, (0, 0, 90)),
    (58, "Motorcycle", 1, (0, 0, 230)),
    (59, "On Rails", 0, (0, 80, 100)),
    (60, "Other Vehicle", 1, (128, 64, 64)),
    (61, "Trailer", 1, (0, 0, 110)),
    (62, "Truck", 1, (0, 0, 70)),
    (63, "Wheeled Slow", 1, (0, 0, 192)),
    (64, "Car Mount", 0, (32, 32, 32)),
    (65, "Ego Vehicle", 0, (120, 10, 10)),
)

# Procedural demo dataset (converters/shapes.py): things first, then stuff.
SHAPES_CLASSES = (
    (1, "circle", 1, (230, 60, 60)),
    (2, "square", 1, (60, 200, 60)),
    (3, "triangle", 1, (60, 90, 230)),
    (4, "sky", 0, (150, 210, 250)),
    (5, "ground", 0, (140, 100, 50)),
    (6, "wall", 0, (190, 190, 170)),
)


def _from_table(name, table, **fields) -> DatasetInfo:
  return DatasetInfo(
      name=name,
      num_classes=len(table),
      ignore_label=IGNORE_LABEL,
      thing_class_ids=tuple(i for i, row in enumerate(table) if row[2]),
      class_names=tuple(row[1] for row in table),
      colormap=np.array([row[3] for row in table], np.uint8),
      official_category_ids=tuple(row[0] for row in table),
      **fields)


def _imagenet_info() -> DatasetInfo:
  synsets = imagenet_synsets()
  return DatasetInfo(
      name="imagenet",
      num_classes=len(synsets),
      ignore_label=IGNORE_LABEL,
      label_divisor=0,
      thing_class_ids=(),
      class_names=synsets,
      colormap=np.array([_fallback_color(i) for i in range(len(synsets))], np.uint8),
      splits={"train": 1281167, "val": 50000},
      task="classification")


def imagenet_synsets() -> Tuple[str, ...]:
  """The 1000 ILSVRC-2012 synsets in label order (sorted; tensorflow_datasets' list)."""
  synsets = tuple(tfds_resource_lines("labels.txt"))
  if len(synsets) != 1000:
    raise ValueError(f"expected 1000 synsets in tensorflow_datasets' imagenet2012 "
                     f"labels.txt, found {len(synsets)}")
  return synsets


def tfds_resource_lines(name: str) -> List[str]:
  """Non-empty lines of tensorflow_datasets/datasets/imagenet2012/<name>.

  Located without importing tensorflow_datasets (which is slow to import).
  """
  # pylint: disable=import-outside-toplevel
  import importlib.util
  spec = importlib.util.find_spec("tensorflow_datasets")
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError("tensorflow_datasets is not installed; it provides the "
                            "ImageNet synset list")
  path = os.path.join(list(spec.submodule_search_locations)[0], "datasets", "imagenet2012",
                      name)
  with open(path) as f:
    return [line.strip() for line in f if line.strip()]


def _build_registry():
  return {
      "coco_panoptic": lambda: _from_table(
          "coco_panoptic", _COCO_PANOPTIC_CLASSES, label_divisor=256,
          splits={"train": 118287, "val": 5000}, stuff_area=4096, nms_kernel=41,
          eval_crop_size=(641, 641)),
      "cityscapes_panoptic": lambda: _from_table(
          "cityscapes_panoptic", _CITYSCAPES_CLASSES, label_divisor=1000,
          splits={"train": 2975, "val": 500}, stuff_area=2048, nms_kernel=7,
          eval_crop_size=(1025, 2049)),
      # Vistas label divisor: not published by the papers (papers.md §5.5); 1000 holds the
      # densest images (< 1000 instances of one class).
      "mapillary_vistas": lambda: _from_table(
          "mapillary_vistas", _MAPILLARY_VISTAS_V12_CLASSES, label_divisor=1000,
          splits={"training": 18000, "validation": 2000}, stuff_area=4096, nms_kernel=7,
          eval_crop_size=(2177, 2177)),
      "imagenet": _imagenet_info,
      "shapes": lambda: _from_table(
          "shapes", SHAPES_CLASSES, label_divisor=256, splits={"train": 300, "val": 50},
          stuff_area=32, nms_kernel=7, eval_crop_size=(65, 65)),
  }


def known_datasets() -> Tuple[str, ...]:
  return tuple(sorted(_build_registry()))


def get_dataset_info(name: str) -> DatasetInfo:
  """Returns the DatasetInfo registered under `name`.

  Known names: coco_panoptic, cityscapes_panoptic, mapillary_vistas (v1.2, 65 classes),
  imagenet, shapes. Mapillary Vistas v2.0 and custom datasets: build one with
  `dataset_info_from_panoptic_categories` from the panoptic JSON's categories, or read
  the `dataset_info.json` a converter wrote (`dataset_info_from_json`; in a config:
  `dataset.dataset_info_file`, see `dataset_info_from_config`).

  Raises:
    ValueError: for an unknown name, listing the known ones.
  """
  registry = _build_registry()
  if name not in registry:
    raise ValueError(f"unknown dataset {name!r}; known datasets: {sorted(registry)}")
  return registry[name]()


# The converter CLI that writes each dataset's TFRecords, keyed by the folder that the
# shipped configs' relative file patterns use (`coco/train-*.tfrecord`, ...).
_CONVERTERS = {"coco": "data/build_coco_data.py", "cityscapes": "data/build_cityscapes_data.py",
               "mapillary": "data/build_mapillary_data.py",
               "imagenet": "data/build_imagenet_data.py", "shapes": "data/build_shapes_data.py"}


def missing_records_message(file_pattern) -> str:
  """Explains a TFRecord `file_pattern` (str or list) that matches no file, and its fix.

  Names the converter command that writes it (from the pattern's folder, as in the shipped
  configs; every converter otherwise) and says that `--data_dir` sets the root of relative
  patterns.
  """
  patterns = [file_pattern] if isinstance(file_pattern, str) else list(file_pattern)
  folders = {part for pattern in patterns for part in pattern.split("/")}
  named = [script for folder, script in _CONVERTERS.items() if folder in folders]
  first = patterns[0] if patterns else ""
  output_dir = os.path.dirname(first) or "DIR"
  split = os.path.basename(first).split("-")[0] or "SPLIT"
  if len(named) == 1:
    command = (f"python {named[0]} --input_dir=<dataset root> --output_dir={output_dir} "
               f"--split={split}")
  else:
    command = "python data/build_<dataset>_data.py (one of " + ", ".join(
        sorted(_CONVERTERS.values())) + ")"
  return (f"dataset file pattern {file_pattern!r} matches no files; write the TFRecords "
          f"with `{command}`. Relative patterns of a config are resolved against "
          f"--data_dir (default: $DEEPLAB_AXIAL_DATA_DIR, else ./data_cache).")


__all__ = ["DatasetInfo", "IGNORE_LABEL", "SHAPES_CLASSES", "dataset_info_from_config",
           "dataset_info_from_dict", "dataset_info_from_json",
           "dataset_info_from_panoptic_categories", "get_dataset_info", "imagenet_synsets",
           "known_datasets", "missing_records_message"]
