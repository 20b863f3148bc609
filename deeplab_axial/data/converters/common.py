"""Shared converter machinery: reading/validating files, building tf.train.Examples, and
writing sharded TFRecords in parallel, atomically and resumably with a progress bar.

Output layout of every converter, in `output_dir`:
  {split}-{shard:05d}-of-{num_shards:05d}.tfrecord   the shards
  {split}.manifest.json                              counts per finished shard, bad examples
  dataset_info.json                                  the DatasetInfo used (classes, divisor)

A shard is written to the hidden `.<shard>.tmp` (so `{split}-*` globs never match it) and
renamed when complete; the manifest (written only
by the main thread, atomically) lists the finished shards. Re-running the same conversion
skips shards that are both on disk and in the manifest, so an interrupted run resumes; a
leftover `.tmp` is never taken as done.
"""
import concurrent.futures
import dataclasses
import io
import json
import os
import threading
from typing import Callable, Dict, Optional, Sequence, Tuple, TypeVar

from absl import logging
import numpy as np
from PIL import Image
import tensorflow as tf

from deeplab_axial import errors
from deeplab_axial import progress as progress_lib
from deeplab_axial.data import datasets
from deeplab_axial.data import encoding
from deeplab_axial.data.encoding import Keys

Task = TypeVar("Task")


class ConversionError(errors.UserError, ValueError):
  """A bad input example; the message names the file and the problem."""


class _Cancelled(Exception):
  """Raised inside a shard job when another shard failed."""


@dataclasses.dataclass(frozen=True)
class ImageData:
  """An encoded RGB(or grayscale) image ready to store."""
  encoded: bytes
  format: str  # "jpeg" or "png"
  height: int
  width: int


def read_image(path: str, *, purpose: str = "image") -> ImageData:
  """Reads and fully decodes an image file to validate it.

  JPEG and PNG files in RGB or grayscale are stored as they are; anything else (CMYK JPEG,
  RGBA/palette PNG, other formats) is re-encoded losslessly as RGB PNG so that the input
  pipeline only ever sees JPEG/PNG that decode to 3 channels.

  Raises:
    ConversionError: the file is missing or cannot be decoded.
  """
  if not tf.io.gfile.exists(path):
    raise ConversionError(f"missing {purpose}: {path} does not exist")
  with tf.io.gfile.GFile(path, "rb") as f:
    data = f.read()
  try:
    with Image.open(io.BytesIO(data)) as image:
      image.load()
      pil_format, mode, (width, height) = image.format, image.mode, image.size
      if pil_format in ("JPEG", "PNG") and mode in ("RGB", "L"):
        return ImageData(data, pil_format.lower(), height, width)
      buffer = io.BytesIO()
      image.convert("RGB").save(buffer, format="PNG")
      return ImageData(buffer.getvalue(), "png", height, width)
  except (OSError, SyntaxError, ValueError) as error:  # PIL's ways of saying "corrupt"
    raise ConversionError(f"corrupt {purpose} {path}: {error}") from error


def read_rgb_png(path: str, *, purpose: str = "label PNG") -> np.ndarray:
  """Reads an RGB PNG (e.g. a COCO-format panoptic id PNG) as uint8 [h, w, 3]."""
  if not tf.io.gfile.exists(path):
    raise ConversionError(f"missing {purpose}: {path} does not exist")
  with tf.io.gfile.GFile(path, "rb") as f:
    data = f.read()
  try:
    with Image.open(io.BytesIO(data)) as image:
      if image.format != "PNG":
        raise ConversionError(f"corrupt {purpose} {path}: expected PNG, found "
                              f"{image.format}")
      return np.asarray(image.convert("RGB"))
  except (OSError, SyntaxError, ValueError) as error:
    if isinstance(error, ConversionError):
      raise
    raise ConversionError(f"corrupt {purpose} {path}: {error}") from error


def _bytes_feature(value: bytes):
  return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def _int_feature(value: int):
  return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(value)]))


def _image_features(image: ImageData, image_id: str, filename: str):
  return {
      Keys.IMAGE_ENCODED: _bytes_feature(image.encoded),
      Keys.IMAGE_FORMAT: _bytes_feature(image.format.encode()),
      Keys.IMAGE_HEIGHT: _int_feature(image.height),
      Keys.IMAGE_WIDTH: _int_feature(image.width),
      Keys.IMAGE_CHANNELS: _int_feature(3),
      Keys.IMAGE_ID: _bytes_feature(str(image_id).encode()),
      Keys.IMAGE_FILENAME: _bytes_feature(os.path.basename(filename).encode()),
  }


def panoptic_example(image: ImageData, panoptic: np.ndarray, *, image_id: str,
                     filename: str, dataset_info: datasets.DatasetInfo) -> bytes:
  """Serialized tf.train.Example of one panoptic image (schema: docs/data.md)."""
  if panoptic.shape != (image.height, image.width):
    raise ConversionError(f"{filename}: panoptic map shape {panoptic.shape} does not match "
                          f"the image size {(image.height, image.width)}")
  try:
    encoding.validate_panoptic(
        panoptic, num_classes=dataset_info.num_classes,
        label_divisor=dataset_info.label_divisor, ignore_label=dataset_info.ignore_label,
        thing_class_ids=dataset_info.thing_class_ids, source=filename)
  except ValueError as error:
    raise ConversionError(str(error)) from error
  features = _image_features(image, image_id, filename)
  features.update({
      Keys.PANOPTIC_ENCODED: _bytes_feature(encoding.encode_panoptic_png(panoptic)),
      Keys.PANOPTIC_FORMAT: _bytes_feature(encoding.PANOPTIC_FORMAT_RGB_ID.encode()),
      Keys.LABEL_DIVISOR: _int_feature(dataset_info.label_divisor),
      Keys.IGNORE_LABEL: _int_feature(dataset_info.ignore_label),
      Keys.DATASET_NAME: _bytes_feature(dataset_info.name.encode()),
      Keys.NUM_CLASSES: _int_feature(dataset_info.num_classes),
  })
  return tf.train.Example(features=tf.train.Features(feature=features)).SerializeToString()


def classification_example(image: ImageData, label: int, *, class_name: str, image_id: str,
                           filename: str, dataset_info: datasets.DatasetInfo) -> bytes:
  """Serialized tf.train.Example of one classification image."""
  if not 0 <= label < dataset_info.num_classes:
    raise ConversionError(f"{filename}: label {label} outside [0, "
                          f"{dataset_info.num_classes})")
  features = _image_features(image, image_id, filename)
  features.update({
      Keys.CLASS_LABEL: _int_feature(label),
      Keys.CLASS_NAME: _bytes_feature(class_name.encode()),
      Keys.DATASET_NAME: _bytes_feature(dataset_info.name.encode()),
      Keys.NUM_CLASSES: _int_feature(dataset_info.num_classes),
  })
  return tf.train.Example(features=tf.train.Features(feature=features)).SerializeToString()


def shard_path(output_dir: str, split: str, index: int, num_shards: int) -> str:
  return os.path.join(output_dir, f"{split}-{index:05d}-of-{num_shards:05d}.tfrecord")


def temporary_path(path: str) -> str:
  """Where `path` is written before the atomic rename (hidden, never matched by globs)."""
  return os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.tmp")


def manifest_path(output_dir: str, split: str) -> str:
  return os.path.join(output_dir, f"{split}.manifest.json")


def file_pattern(output_dir: str, split: str) -> str:
  """Glob matching the shards of `split` written to `output_dir`."""
  return os.path.join(output_dir, f"{split}-*-of-*.tfrecord")


def _write_json_atomically(path: str, content: Dict) -> None:
  temporary = temporary_path(path)
  with tf.io.gfile.GFile(temporary, "w") as f:
    f.write(json.dumps(content, indent=1, sort_keys=True))
  tf.io.gfile.rename(temporary, path, overwrite=True)


def read_manifest(output_dir: str, split: str) -> Optional[Dict]:
  path = manifest_path(output_dir, split)
  if not tf.io.gfile.exists(path):
    return None
  with tf.io.gfile.GFile(path) as f:
    return json.load(f)


def _shard_bounds(num_tasks: int, num_shards: int, index: int) -> Tuple[int, int]:
  return num_tasks * index // num_shards, num_tasks * (index + 1) // num_shards


def write_sharded_tfrecords(tasks: Sequence[Task], process: Callable[[Task], bytes], *,
                            output_dir: str, split: str, num_shards: int,
                            num_workers: int = 2, skip_bad_examples: bool = False,
                            describe: Callable[[Task], str] = str,
                            dataset_info: Optional[datasets.DatasetInfo] = None,
                            show_progress: bool = True) -> Dict:
  """Converts `tasks` into `num_shards` TFRecord files, in parallel and resumably.

  Shard i holds the contiguous slice `tasks[n·i/S : n·(i+1)/S]`, so the output is the
  same whatever `num_workers` is.

  Args:
    tasks: one entry per example, in output order (cheap descriptors such as paths).
    process: task -> serialized tf.train.Example; raises ConversionError on bad input.
    output_dir: created if missing.
    split: output file prefix.
    num_shards: number of output files.
    num_workers: shards written concurrently (threads; decoding/encoding release the GIL).
    skip_bad_examples: log and skip tasks whose `process` raises ConversionError instead
      of failing; they are listed in the manifest under `bad_examples`.
    describe: task -> short string for logs.
    dataset_info: written to `dataset_info.json`.
    show_progress: draw a progress bar on stdout.

  Returns:
    The manifest dict (`num_examples`, `shards`, `bad_examples`, ...).

  Raises:
    ConversionError: the first bad example, unless `skip_bad_examples`. Finished shards
      stay (a re-run resumes); partial shards are deleted.
    ValueError: `output_dir` holds a different conversion of the same split.
  """
  if num_shards < 1:
    raise ValueError(f"num_shards must be >= 1, got {num_shards}")
  if num_workers < 1:
    raise ValueError(f"num_workers must be >= 1, got {num_workers}")
  tf.io.gfile.makedirs(output_dir)
  if dataset_info is not None:
    _write_json_atomically(os.path.join(output_dir, "dataset_info.json"),
                           dataset_info.to_json())
  manifest = read_manifest(output_dir, split)
  if manifest is not None and (manifest["num_tasks"] != len(tasks) or
                               manifest["num_shards"] != num_shards):
    raise ValueError(
        f"{manifest_path(output_dir, split)} records a conversion of {manifest['num_tasks']} "
        f"examples into {manifest['num_shards']} shards, but this run has {len(tasks)} "
        f"examples and {num_shards} shards; delete the old '{split}-*' and '{split}.*' files in "
        f"{output_dir} or use the same input and --num_shards")
  if manifest is None:
    manifest = {"split": split, "num_tasks": len(tasks), "num_shards": num_shards,
                "shards": {}, "bad_examples": [], "complete": False}
  finished = {int(index) for index, entry in manifest["shards"].items()
              if tf.io.gfile.exists(os.path.join(output_dir, entry["file"]))}
  manifest["shards"] = {key: value for key, value in manifest["shards"].items()
                        if int(key) in finished}
  todo = [i for i in range(num_shards) if i not in finished]
  if finished:
    logging.info("%s: %d of %d shards already written, resuming", split, len(finished),
                 num_shards)

  remaining = sum(np.diff(_shard_bounds(len(tasks), num_shards, i))[0] for i in todo)
  progress = progress_lib.ProgressBar(int(remaining), f"{split}") if show_progress else None
  cancel = threading.Event()

  def write_shard(index: int):
    begin, end = _shard_bounds(len(tasks), num_shards, index)
    path = shard_path(output_dir, split, index, num_shards)
    temporary = temporary_path(path)
    count, bad = 0, []
    try:
      with tf.io.TFRecordWriter(temporary) as writer:
        for task in tasks[begin:end]:
          if cancel.is_set():
            raise _Cancelled()
          try:
            writer.write(process(task))
            count += 1
          except ConversionError as error:
            if not skip_bad_examples:
              raise
            logging.warning("skipping bad example %s: %s", describe(task), error)
            bad.append({"example": describe(task), "error": str(error)})
          if progress is not None:
            progress.update()
      tf.io.gfile.rename(temporary, path, overwrite=True)
    except BaseException:
      if tf.io.gfile.exists(temporary):
        tf.io.gfile.remove(temporary)
      raise
    return index, os.path.basename(path), count, bad

  error = None
  with concurrent.futures.ThreadPoolExecutor(max_workers=num_workers) as pool:
    futures = [pool.submit(write_shard, index) for index in todo]
    for future in concurrent.futures.as_completed(futures):
      try:
        index, name, count, bad = future.result()
      except _Cancelled:
        continue
      except BaseException as failure:  # pylint: disable=broad-except
        if error is None:
          error = failure
          cancel.set()
        continue
      manifest["shards"][f"{index:05d}"] = {"file": name, "num_examples": count}
      manifest["bad_examples"].extend(bad)
      _write_json_atomically(manifest_path(output_dir, split), manifest)
  if progress is not None:
    progress.close()
  if error is not None:
    raise error
  manifest["num_examples"] = sum(e["num_examples"] for e in manifest["shards"].values())
  manifest["complete"] = True
  _write_json_atomically(manifest_path(output_dir, split), manifest)
  logging.info("%s: wrote %d examples in %d shards to %s (%d bad examples skipped)", split,
               manifest["num_examples"], num_shards, output_dir,
               len(manifest["bad_examples"]))
  return manifest


def check_split(split: str, allowed: Sequence[str]) -> str:
  if split not in allowed:
    raise ValueError(f"split must be one of {list(allowed)}, got {split!r}")
  return split


__all__ = ["ConversionError", "ImageData", "classification_example",
           "file_pattern", "manifest_path", "panoptic_example", "read_image",
           "read_manifest", "read_rgb_png", "shard_path", "write_sharded_tfrecords"]


def define_converter_flags(*, default_split: Optional[str], default_num_shards: int) -> None:
  """Registers the flags every data/build_*_data.py CLI shares."""
  from absl import flags  # pylint: disable=import-outside-toplevel
  flags.DEFINE_string("input_dir", None, "Dataset root in the official layout.")
  flags.DEFINE_string("output_dir", None, "Where the TFRecord shards are written.")
  flags.DEFINE_string("split", default_split, "Split to convert.")
  flags.DEFINE_integer("num_shards", default_num_shards, "Number of output shards.")
  flags.DEFINE_integer("num_workers", 2, "Shards written in parallel.")
  flags.DEFINE_bool("skip_bad_examples", False,
                    "Log and skip bad examples instead of stopping at the first one.")
  flags.mark_flags_as_required(["output_dir"])
