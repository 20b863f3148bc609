"""Procedural panoptic demo dataset ("shapes"), written in COCO panoptic format.

Every image has two stuff regions split by a random horizon (sky or wall above, ground
below; a colour gradient plus noise) and a few thing instances (circle, square, triangle)
of varying size and colour, painted in order so later shapes occlude earlier ones.
Placements that would hide more than half of an earlier instance are re-drawn, so every
instance stays clearly visible. Each class has its own hue, which makes the task easy
enough for a small model to learn on a CPU within minutes.

On disk (`generate_shapes_dataset`), exactly the COCO panoptic 2017 layout, so the demo
goes through the real COCO converter:
  {root}/{split}2017/{image_id:06d}.png
  {root}/annotations/panoptic_{split}2017.json
  {root}/annotations/panoptic_{split}2017/{image_id:06d}.png     RGB segment ids
Everything is deterministic given the seed: image i of a split depends only on
(seed, split, i).
"""
import dataclasses
import io
import json
import os
from typing import Dict, List, Sequence, Tuple

from absl import logging
import numpy as np
from PIL import Image
import tensorflow as tf

from deeplab_axial.data import datasets
from deeplab_axial.data import encoding
from deeplab_axial.data.converters import coco
from deeplab_axial.data.converters import common

_SPLIT_SALT = {"train": 0, "val": 1}
_THING_NAMES = ("circle", "square", "triangle")
_STUFF_UPPER = ("sky", "wall")
_STUFF_LOWER = "ground"


@dataclasses.dataclass(frozen=True)
class ShapesConfig:
  """Generator settings.

  Attributes:
    image_size: (height, width) of every image.
    num_train, num_val: images per split.
    seed: base random seed.
    max_instances: thing instances per image are drawn from [1, max_instances].
    radius_range: shape half-size as a fraction of min(height, width).
    noise_std: standard deviation of the per-pixel colour noise (0-255 scale).
    colour_jitter: per-instance uniform colour variation around the class colour.
  """
  image_size: Tuple[int, int] = (64, 64)
  num_train: int = 300
  num_val: int = 50
  seed: int = 0
  max_instances: int = 4
  radius_range: Tuple[float, float] = (0.12, 0.24)
  noise_std: float = 6.0
  colour_jitter: int = 30

  def __post_init__(self):
    height, width = self.image_size
    if height < 16 or width < 16:
      raise ValueError(f"image_size must be at least 16x16, got {self.image_size}")
    if self.num_train < 1 or self.num_val < 1:
      raise ValueError(f"num_train and num_val must be >= 1, got {self.num_train}, "
                       f"{self.num_val}")
    if self.max_instances < 1:
      raise ValueError(f"max_instances must be >= 1, got {self.max_instances}")

  def num_images(self, split: str) -> int:
    return {"train": self.num_train, "val": self.num_val}[split]


def _class_colours() -> Dict[str, np.ndarray]:
  return {name: np.array(colour, np.float64)
          for _, name, _, colour in datasets.SHAPES_CLASSES}


def _category_ids() -> Dict[str, int]:
  return {name: category_id for category_id, name, _, _ in datasets.SHAPES_CLASSES}


def _shape_mask(kind: str, center: Tuple[float, float], radius: float,
                grid: Tuple[np.ndarray, np.ndarray]) -> np.ndarray:
  rows, cols = grid
  dy, dx = rows - center[0], cols - center[1]
  if kind == "circle":
    return dy**2 + dx**2 <= radius**2
  if kind == "square":
    return (np.abs(dy) <= 0.85 * radius) & (np.abs(dx) <= 0.85 * radius)
  # Upward isosceles triangle: apex at dy = -r, base at dy = +r of half-width r.
  return (dy <= radius) & (np.abs(dx) <= (dy + radius) / 2.0)


def render_scene(rng: np.random.Generator, config: ShapesConfig
                 ) -> Tuple[np.ndarray, np.ndarray, List[Dict]]:
  """Draws one image.

  Returns:
    image: uint8 [height, width, 3].
    segment_ids: int32 [height, width], COCO-style segment ids (all pixels labelled).
    segments: COCO `segments_info` dicts (id, category_id, iscrowd, area, bbox).
  """
  height, width = config.image_size
  colours, category_ids = _class_colours(), _category_ids()
  grid = np.mgrid[0:height, 0:width].astype(np.float64)
  rows = grid[0]
  horizon = int(rng.integers(int(0.35 * height), int(0.65 * height) + 1))
  upper = _STUFF_UPPER[int(rng.integers(len(_STUFF_UPPER)))]

  image = np.zeros((height, width, 3), np.float64)
  segment_ids = np.where(rows < horizon, 1, 2).astype(np.int32)
  for segment_id, name in ((1, upper), (2, _STUFF_LOWER)):
    region = segment_ids == segment_id
    gradient = 25.0 * (rows / height - 0.5)[..., None] * (1 if name == "sky" else -1)
    image = np.where(region[..., None], colours[name] + gradient, image)
  stuff = [(1, upper), (2, _STUFF_LOWER)]

  things = []  # (segment id, kind, full mask area)
  short_side = min(height, width)
  for _ in range(int(rng.integers(1, config.max_instances + 1))):
    for _attempt in range(20):
      kind = _THING_NAMES[int(rng.integers(len(_THING_NAMES)))]
      radius = rng.uniform(*config.radius_range) * short_side
      center = (rng.uniform(0.15, 0.85) * height, rng.uniform(0.15, 0.85) * width)
      mask = _shape_mask(kind, center, radius, (grid[0], grid[1]))
      if mask.sum() < 12:
        continue
      # Keep every earlier instance at least half visible.
      if all(np.sum((segment_ids == sid) & ~mask) >= 0.5 * area for sid, _, area in things):
        break
    else:
      continue
    segment_id = 3 + len(things)
    colour = colours[kind] + rng.uniform(-config.colour_jitter, config.colour_jitter, 3)
    shading = 12.0 * ((grid[1] - center[1]) / max(radius, 1.0))[..., None]
    image = np.where(mask[..., None], colour + shading * 0.3, image)
    segment_ids[mask] = segment_id
    things.append((segment_id, kind, int(mask.sum())))

  image += rng.normal(0.0, config.noise_std, image.shape)
  image = np.clip(np.round(image), 0, 255).astype(np.uint8)

  segments = []
  for segment_id, name in stuff + [(sid, kind) for sid, kind, _ in things]:
    mask = segment_ids == segment_id
    if not mask.any():
      continue
    ys, xs = np.nonzero(mask)
    segments.append({
        "id": int(segment_id), "category_id": category_ids[name], "iscrowd": 0,
        "area": int(mask.sum()),
        "bbox": [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1),
                 int(ys.max() - ys.min() + 1)]})
  return image, segment_ids, segments


def render_image(config: ShapesConfig, split: str, index: int
                 ) -> Tuple[np.ndarray, np.ndarray, List[Dict]]:
  """Image `index` of `split`; depends only on (config, split, index)."""
  if split not in _SPLIT_SALT:
    raise ValueError(f"split must be one of {sorted(_SPLIT_SALT)}, got {split!r}")
  rng = np.random.default_rng([config.seed, _SPLIT_SALT[split], index])
  return render_scene(rng, config)


def _png_bytes(array: np.ndarray) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(array).save(buffer, format="PNG")
  return buffer.getvalue()


def _categories() -> List[Dict]:
  return [{"id": category_id, "name": name, "isthing": is_thing, "color": list(colour),
           "supercategory": "shape" if is_thing else "background"}
          for category_id, name, is_thing, colour in datasets.SHAPES_CLASSES]


def generate_shapes_dataset(root: str, config: ShapesConfig = ShapesConfig(),
                            splits: Sequence[str] = ("train", "val")) -> str:
  """Writes the raw dataset in COCO panoptic format under `root`; returns `root`."""
  for split in splits:
    image_dir = os.path.join(root, f"{split}2017")
    label_dir = os.path.join(root, "annotations", f"panoptic_{split}2017")
    tf.io.gfile.makedirs(image_dir)
    tf.io.gfile.makedirs(label_dir)
    images, annotations = [], []
    for index in range(config.num_images(split)):
      image, segment_ids, segments = render_image(config, split, index)
      name = f"{index:06d}.png"
      with tf.io.gfile.GFile(os.path.join(image_dir, name), "wb") as f:
        f.write(_png_bytes(image))
      with tf.io.gfile.GFile(os.path.join(label_dir, name), "wb") as f:
        f.write(_png_bytes(encoding.id_to_rgb(segment_ids)))
      images.append({"id": index, "file_name": name, "height": image.shape[0],
                     "width": image.shape[1]})
      annotations.append({"image_id": index, "file_name": name, "segments_info": segments})
    json_path = os.path.join(root, "annotations", f"panoptic_{split}2017.json")
    with tf.io.gfile.GFile(json_path + ".tmp", "w") as f:
      json.dump({"images": images, "annotations": annotations, "categories": _categories()},
                f)
    tf.io.gfile.rename(json_path + ".tmp", json_path, overwrite=True)
  return root


def shapes_dataset_info(config: ShapesConfig = ShapesConfig()) -> datasets.DatasetInfo:
  """The `shapes` DatasetInfo with the split sizes and eval crop of `config`."""
  height, width = config.image_size
  return dataclasses.replace(
      datasets.get_dataset_info("shapes"),
      splits={"train": config.num_train, "val": config.num_val},
      eval_crop_size=(height + 1 if height % 2 == 0 else height,
                      width + 1 if width % 2 == 0 else width))


def convert_shapes(raw_root: str, output_dir: str, config: ShapesConfig = ShapesConfig(), *,
                   num_shards: int = 2, num_workers: int = 2, skip_bad_examples: bool = False,
                   show_progress: bool = True) -> Dict[str, str]:
  """Runs the COCO converter over a generated raw dataset; returns split -> file pattern."""
  info = shapes_dataset_info(config)
  patterns = {}
  for split in ("train", "val"):
    coco.convert_coco(raw_root, output_dir, split, num_shards=num_shards,
                      num_workers=num_workers, skip_bad_examples=skip_bad_examples,
                      dataset_info=info, show_progress=show_progress)
    patterns[split] = common.file_pattern(output_dir, split)
  return patterns


def ensure_shapes_tfrecords(output_dir: str, *, image_size: Tuple[int, int] = (64, 64),
                            num_train: int = 300, num_val: int = 50, seed: int = 0,
                            num_shards: int = 2, num_workers: int = 2,
                            show_progress: bool = False) -> Dict[str, str]:
  """Generates and converts the shapes dataset into `output_dir` unless already there.

  The raw COCO-format files go to `output_dir/raw`; the TFRecords to `output_dir`. The
  settings are stamped in `output_dir/shapes_config.json`; a later call with the same
  settings returns at once.

  Returns:
    {"train": file pattern, "val": file pattern}.

  Raises:
    ValueError: `output_dir` holds a shapes dataset made with other settings.
  """
  config = ShapesConfig(image_size=tuple(image_size), num_train=num_train, num_val=num_val,
                        seed=seed)
  stamp_path = os.path.join(output_dir, "shapes_config.json")
  stamp = {"config": dataclasses.asdict(config), "num_shards": num_shards}
  stamp = json.loads(json.dumps(stamp))  # tuples -> lists, as read back from disk
  patterns = {split: common.file_pattern(output_dir, split) for split in ("train", "val")}
  if tf.io.gfile.exists(stamp_path):
    with tf.io.gfile.GFile(stamp_path) as f:
      existing = json.load(f)
    if existing != stamp:
      raise ValueError(f"{output_dir} holds a shapes dataset made with {existing}, not "
                       f"{stamp}; use another output_dir or delete it")
    manifests = [common.read_manifest(output_dir, split) for split in patterns]
    if all(m is not None and m.get("complete") for m in manifests):
      return patterns
  logging.info("generating the shapes dataset in %s", output_dir)
  raw_root = generate_shapes_dataset(os.path.join(output_dir, "raw"), config)
  convert_shapes(raw_root, output_dir, config, num_shards=num_shards,
                 num_workers=num_workers, show_progress=show_progress)
  with tf.io.gfile.GFile(stamp_path, "w") as f:
    json.dump(stamp, f)
  return patterns


__all__ = ["ShapesConfig", "convert_shapes", "ensure_shapes_tfrecords",
           "generate_shapes_dataset", "render_image", "render_scene", "shapes_dataset_info"]
