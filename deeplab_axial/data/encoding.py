"""Panoptic label encoding: the in-memory convention and its lossless PNG storage.

In memory a panoptic map is int32 `[height, width]` holding
`semantic_id * label_divisor + instance_id`:
  * `semantic_id` is the contiguous train id in `[0, num_classes)`, or `ignore_label`
    (255 in this package) for void pixels, which are stored as
    `ignore_label * label_divisor` (instance 0);
  * stuff pixels have instance 0; thing pixels of a counted instance have an instance id in
    `[1, label_divisor)`; a thing pixel with instance 0 is a crowd region.

On disk (the TFRecord field `image/panoptic/encoded`) the map is an 8-bit RGB PNG whose
pixel value is `R + 256·G + 256²·B` (the same "RGB id" packing as COCO panoptic PNGs, but
holding our encoded value rather than a segment id). It is lossless for values below 2²⁴,
which covers `255 * 1000 + 999`, the largest value of any supported dataset.
"""
import io
from typing import Sequence

import numpy as np
from PIL import Image

# Largest value an RGB id PNG can hold.
MAX_RGB_ID = 256**3 - 1


def pack_rgb_ids(rgb):
  """Integer `[..., 3]` RGB (NumPy array or tf.Tensor, int32/int64) -> `[...]` ids.

  The one implementation of the packing `R + 256·G + 256²·B`, for NumPy and TensorFlow.
  """
  return rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]


def rgb_to_id(rgb: np.ndarray) -> np.ndarray:
  """RGB id image uint8 `[h, w, 3]` -> int32 `[h, w]` with `R + 256·G + 256²·B`."""
  rgb = np.asarray(rgb)
  if rgb.ndim != 3 or rgb.shape[-1] != 3:
    raise ValueError(f"rgb must have shape [height, width, 3], got {rgb.shape}")
  return pack_rgb_ids(rgb.astype(np.int32))


def id_to_rgb(ids: np.ndarray) -> np.ndarray:
  """int `[h, w]` ids in `[0, 2²⁴)` -> uint8 `[h, w, 3]` RGB id image."""
  ids = np.asarray(ids)
  if ids.size and (ids.min() < 0 or ids.max() > MAX_RGB_ID):
    raise ValueError(f"ids must lie in [0, {MAX_RGB_ID}] to be stored as an RGB id PNG, got "
                     f"range [{ids.min()}, {ids.max()}]")
  ids = ids.astype(np.int64)
  return np.stack([ids % 256, ids // 256 % 256, ids // 65536], axis=-1).astype(np.uint8)


def encode_panoptic_png(panoptic: np.ndarray) -> bytes:
  """Encodes an int `[h, w]` panoptic map as RGB id PNG bytes (lossless)."""
  panoptic = np.asarray(panoptic)
  if panoptic.ndim != 2:
    raise ValueError(f"panoptic must have shape [height, width], got {panoptic.shape}")
  buffer = io.BytesIO()
  Image.fromarray(id_to_rgb(panoptic), mode="RGB").save(buffer, format="PNG")
  return buffer.getvalue()


def decode_panoptic_png(png_bytes: bytes) -> np.ndarray:
  """NumPy inverse of `encode_panoptic_png`: PNG bytes -> int32 `[h, w]`."""
  with Image.open(io.BytesIO(png_bytes)) as image:
    return rgb_to_id(np.asarray(image.convert("RGB")))


def validate_panoptic(panoptic: np.ndarray, *, num_classes: int, label_divisor: int,
                      ignore_label: int, thing_class_ids: Sequence[int],
                      source: str = "panoptic") -> None:
  """Checks that a panoptic map follows the encoding of this module.

  Args:
    panoptic: int `[height, width]`.
    num_classes, label_divisor, ignore_label, thing_class_ids: the dataset's constants.
    source: what to call the map in error messages (e.g. the file it came from).

  Raises:
    ValueError: naming `source`, the offending ids and what was expected.
  """
  panoptic = np.asarray(panoptic)
  if panoptic.ndim != 2 or not np.issubdtype(panoptic.dtype, np.integer):
    raise ValueError(f"{source}: expected an integer [height, width] map, got dtype "
                     f"{panoptic.dtype} shape {panoptic.shape}")
  if label_divisor <= 0:
    raise ValueError(f"label_divisor must be positive, got {label_divisor}")
  if panoptic.size and panoptic.min() < 0:
    raise ValueError(f"{source}: negative panoptic ids {np.unique(panoptic[panoptic < 0])}")
  ids = np.unique(panoptic)
  semantic, instance = ids // label_divisor, ids % label_divisor
  known = (semantic < num_classes) | (semantic == ignore_label)
  if not known.all():
    raise ValueError(f"{source}: semantic ids {sorted(set(semantic[~known].tolist()))} are "
                     f"neither in [0, {num_classes}) nor the ignore label {ignore_label}")
  is_thing = np.isin(semantic, list(thing_class_ids))
  bad = ~is_thing & (instance != 0)
  if bad.any():
    raise ValueError(f"{source}: stuff or void pixels carry instance ids: panoptic ids "
                     f"{ids[bad][:10].tolist()} (semantic {semantic[bad][:10].tolist()}); "
                     f"only thing classes {list(thing_class_ids)} may have instance ids")


class Keys:
  """tf.train.Example feature keys of the one TFRecord schema (docs/data.md)."""
  IMAGE_ENCODED = "image/encoded"  # bytes: the JPEG or PNG file
  IMAGE_FORMAT = "image/format"  # bytes: "jpeg" or "png"
  IMAGE_HEIGHT = "image/height"  # int64
  IMAGE_WIDTH = "image/width"  # int64
  IMAGE_CHANNELS = "image/channels"  # int64: always 3 (decoded as RGB)
  IMAGE_FILENAME = "image/filename"  # bytes: source file name
  IMAGE_ID = "image/id"  # bytes: the dataset's image id, as a string
  PANOPTIC_ENCODED = "image/panoptic/encoded"  # bytes: RGB id PNG (this module)
  PANOPTIC_FORMAT = "image/panoptic/format"  # bytes: PANOPTIC_FORMAT_RGB_ID
  LABEL_DIVISOR = "image/panoptic/label_divisor"  # int64
  IGNORE_LABEL = "image/panoptic/ignore_label"  # int64
  DATASET_NAME = "dataset/name"  # bytes
  NUM_CLASSES = "dataset/num_classes"  # int64
  CLASS_LABEL = "image/class/label"  # int64: classification label
  CLASS_NAME = "image/class/name"  # bytes: e.g. the ImageNet synset


PANOPTIC_FORMAT_RGB_ID = "png_rgb_id"
