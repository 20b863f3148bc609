"""Panoptic prediction on image files: official-format PNGs, overlays and a segments JSON.

A *predictor* maps a uint8 batch `[batch, height, width, 3]` to a dict of NumPy outputs
(`panoptic`, `semantic`, `instance`, `instance_panoptic_ids`, `instance_scores`,
optionally `semantic_probs`), as the exported `serving_default` signature does:

* `SavedModelPredictor(export_dir)` runs an exported SavedModel (base dir or version dir);
* `KerasPredictor(model, serving_options)` runs the same serving graph in-process.

`predict_images(predictor, inputs, output_dir, ...)` writes, for each image `<stem>`:

* `panoptic/<stem>.png` (+ `panoptic.json`) in the dataset's official format:
  `output_format="coco"` (COCO panoptic results), `"cityscapes"` (`<id>_panoptic.png`),
  or `"generic"`: an RGB PNG of our own ids `semantic * label_divisor + instance` encoded
  as `R + 256 G + 256² B` (void = `ignore_label * label_divisor`);
* `overlays/<stem>.png`: the panoptic colouring blended over the image, white boundaries
  between segments;
* one `segments.json`: per image, each segment's `id` (our panoptic id), `category_id`
  (train id), `category` (name), `isthing`, `area`, `bbox` `[x, y, width, height]` and
  `score` (instance score for things; mean class probability for stuff when available).
"""
import glob
import json
import os
import sys
import time

import numpy as np
import tensorflow as tf
from PIL import Image

from deeplab_axial import visualization
from deeplab_axial.data import prediction_writers
from deeplab_axial.export import saved_model

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
OUTPUT_FORMATS = ("generic", "coco", "cityscapes")


class SavedModelPredictor:
  """Runs the `serving_default` signature of an exported model.

  Args:
    export_dir: a version directory, or a base directory (its highest version is used).

  Attributes:
    options: the `ServingOptions` recorded at export time.
    metadata: the export metadata dict (`deeplab_axial.export.load_metadata`).
  """

  def __init__(self, export_dir):
    self.export_dir = saved_model.resolve_export_dir(export_dir)
    self.metadata = saved_model.load_metadata(self.export_dir)
    if "serving_options" not in self.metadata:
      raise ValueError(f"{self.export_dir} has no {saved_model.METADATA_FILE}; it was not "
                       f"written by deeplab_axial.export.export_saved_model")
    fields = dict(self.metadata["serving_options"])
    if fields.get("static_size"):
      fields["static_size"] = tuple(fields["static_size"])
    self.options = saved_model.ServingOptions(**fields)
    self._signature = tf.saved_model.load(self.export_dir).signatures[
        saved_model.DEFAULT_SIGNATURE]

  def dataset_info(self):
    """The DatasetInfo recorded at export time, or None."""
    fields = self.metadata.get("dataset")
    if not fields:
      return None
    from deeplab_axial.data import datasets  # pylint: disable=import-outside-toplevel
    fields = dict(fields)
    for key in ("thing_class_ids", "class_names", "official_category_ids"):
      fields[key] = tuple(fields[key])
    if fields.get("eval_crop_size") is not None:
      fields["eval_crop_size"] = tuple(fields["eval_crop_size"])
    return datasets.DatasetInfo(**fields)

  def __call__(self, images):
    outputs = self._signature(images=tf.constant(images, tf.uint8))
    return {key: value.numpy() for key, value in outputs.items()}


class KerasPredictor:
  """Runs the serving graph of `model` in-process (e.g. a model restored from a checkpoint).

  Args:
    model: a Panoptic-DeepLab `tf_keras.Model`.
    options: a `deeplab_axial.export.ServingOptions`.
  """

  def __init__(self, model, options):
    self.options = options
    self._module = saved_model.PanopticServingModule(model, options)

  def dataset_info(self):
    return None

  def __call__(self, images):
    outputs = self._module.serve_images(tf.constant(images, tf.uint8))
    return {key: value.numpy() for key, value in outputs.items()}


def collect_images(inputs):
  """Image paths from files, folders (searched recursively) and glob patterns.

  Args:
    inputs: a path/pattern or a list of them.

  Returns:
    Sorted unique paths (files in the order given; each folder's images sorted).

  Raises:
    FileNotFoundError: for a path or pattern that matches nothing.
  """
  inputs = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
  paths = []
  for item in inputs:
    item = os.fspath(item)
    if os.path.isdir(item):
      found = sorted(
          os.path.join(root, name) for root, _, names in os.walk(item) for name in names
          if name.lower().endswith(IMAGE_EXTENSIONS))
      if not found:
        raise FileNotFoundError(f"folder {item} holds no image file ({IMAGE_EXTENSIONS})")
    elif os.path.isfile(item):
      found = [item]
    else:
      found = sorted(glob.glob(item))
      if not found:
        raise FileNotFoundError(f"input {item} is neither a file, a folder nor a matching "
                                f"glob pattern")
    paths.extend(path for path in found if path not in paths)
  return paths


def read_image(path):
  """uint8 `[height, width, 3]` RGB pixels of an image file (first frame)."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"image file {path} does not exist")
  try:
    with Image.open(path) as image:
      return np.asarray(image.convert("RGB"))
  except (OSError, ValueError, SyntaxError) as e:
    raise ValueError(f"cannot read image {path}: {e}") from e


def _stem(path):
  return os.path.splitext(os.path.basename(path))[0]


class _Progress:
  """A one-line progress bar: done/total, percentage, images/s, elapsed and ETA."""

  def __init__(self, total, stream=None, enabled=True):
    self.total = total
    self.done = 0
    self.stream = stream or sys.stderr
    self.enabled = enabled
    self.start = time.monotonic()

  def update(self, count=1):
    self.done += count
    if not self.enabled:
      return
    elapsed = time.monotonic() - self.start
    rate = self.done / elapsed if elapsed > 0 else 0.0
    eta = (self.total - self.done) / rate if rate > 0 else 0.0
    width = 30
    filled = int(width * self.done / max(self.total, 1))
    self.stream.write(f"\rpredict [{'#' * filled}{'.' * (width - filled)}] "
                      f"{self.done}/{self.total} ({100 * self.done // max(self.total, 1)}%) "
                      f"{rate:.2f} img/s elapsed {_clock(elapsed)} ETA {_clock(eta)}")
    if self.done >= self.total:
      self.stream.write("\n")
    self.stream.flush()


def _clock(seconds):
  minutes, seconds = divmod(int(round(seconds)), 60)
  hours, minutes = divmod(minutes, 60)
  return f"{hours}:{minutes:02d}:{seconds:02d}"


def segments_info(panoptic, options, instance_panoptic_ids=None, instance_scores=None,
                  semantic_probs=None, class_names=None):
  """Per-segment records of one panoptic map (void excluded).

  Args:
    panoptic: int `[height, width]` panoptic map.
    options: the `ServingOptions` (label_divisor, ignore_label, thing_class_ids).
    instance_panoptic_ids, instance_scores: `[K]` slot ids and scores (for thing scores).
    semantic_probs: optional float `[height, width, classes]` (for stuff scores).
    class_names: optional names indexed by train id.

  Returns:
    List of dicts `id, category_id, category, isthing, area, bbox, score`.
  """
  scores = {}
  if instance_panoptic_ids is not None and instance_scores is not None:
    scores = {int(i): float(s) for i, s in zip(instance_panoptic_ids, instance_scores)
              if i >= 0}
  things = set(options.thing_class_ids)
  records = []
  for segment_id in np.unique(panoptic):
    category = int(segment_id) // options.label_divisor
    if category == options.ignore_label:
      continue
    mask = panoptic == segment_id
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    score = scores.get(int(segment_id))
    if score is None and semantic_probs is not None and category < semantic_probs.shape[-1]:
      score = float(semantic_probs[..., category][mask].mean())
    records.append({
        "id": int(segment_id), "category_id": category,
        "category": class_names[category] if class_names else str(category),
        "isthing": category in things, "area": int(mask.sum()),
        "bbox": [int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1),
                 int(rows[-1] - rows[0] + 1)],
        "score": score})
  return records


class _PanopticOutput:
  """Writes panoptic PNGs in one of OUTPUT_FORMATS under `<output_dir>/panoptic`."""

  def __init__(self, output_dir, output_format, options, dataset_info):
    if output_format not in OUTPUT_FORMATS:
      raise ValueError(f"output_format must be one of {OUTPUT_FORMATS}, got "
                       f"{output_format!r}")
    self.output_format = output_format
    self.png_dir = os.path.join(output_dir, "panoptic")
    self.writer = None
    if output_format == "generic":
      os.makedirs(self.png_dir, exist_ok=True)
      return
    if dataset_info is None or not dataset_info.official_category_ids:
      raise ValueError(f"output_format={output_format!r} needs a dataset_info with "
                       f"official_category_ids (pass --dataset)")
    self.writer = prediction_writers.official_writer(
        output_format, output_dir, label_divisor=options.label_divisor,
        ignore_label=options.ignore_label, thing_class_ids=options.thing_class_ids,
        category_ids=dataset_info.official_category_ids, name="panoptic")

  def write(self, stem, panoptic):
    if self.writer is None:
      Image.fromarray(prediction_writers.id_to_rgb(panoptic)).save(
          os.path.join(self.png_dir, stem + ".png"))
    elif self.output_format == "coco":
      self.writer.write(stem, panoptic)
    else:
      self.writer.write(stem.replace("_leftImg8bit", ""), panoptic)

  def close(self):
    if self.writer is not None:
      self.writer.close()


def _overlay_colormap(dataset_info):
  if dataset_info is None:
    return None
  colormap = visualization.create_colormap(256)
  colormap[:dataset_info.num_classes] = dataset_info.colormap
  colormap[dataset_info.ignore_label] = 0
  return colormap


def _batches(paths, batch_size, skip_unreadable, skipped):
  """Yields (paths, uint8 batch) groups of consecutive readable images of one size."""
  group, group_images = [], []
  for path in paths:
    try:
      image = read_image(path)
    except (ValueError, FileNotFoundError):
      if not skip_unreadable:
        raise
      skipped.append(path)
      continue
    if group and (len(group) == batch_size or image.shape != group_images[0].shape):
      yield group, np.stack(group_images)
      group, group_images = [], []
    group.append(path)
    group_images.append(image)
  if group:
    yield group, np.stack(group_images)


def predict_images(predictor, inputs, output_dir, *, dataset_info=None,
                   output_format="generic", batch_size=1, overlay_alpha=0.5,
                   skip_unreadable=False, progress=True):
  """Predicts every image of `inputs` and writes PNGs, overlays and `segments.json`.

  Args:
    predictor: `SavedModelPredictor` or `KerasPredictor` (see the module docstring).
    inputs: image files, folders or glob patterns (see `collect_images`).
    output_dir: output folder (created).
    dataset_info: `DatasetInfo` for class names, colours and official category ids;
      default: the one recorded in the SavedModel, if any.
    output_format: "generic", "coco" or "cityscapes".
    batch_size: images per predictor call (consecutive images of one size are batched).
    overlay_alpha: weight of the colouring in the overlays.
    skip_unreadable: skip (and list) unreadable images instead of raising.
    progress: print a progress bar to stderr.

  Returns:
    Dict `num_images` (written), `skipped` (paths), `segments_file`.

  Raises:
    ValueError: for an unreadable image (naming the file) unless `skip_unreadable`, or
      bad arguments; FileNotFoundError: for inputs that match nothing.
  """
  if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
    raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
  paths = collect_images(inputs)
  stems = {}
  for path in paths:
    if _stem(path) in stems:
      raise ValueError(f"images {stems[_stem(path)]} and {path} share the output name "
                       f"{_stem(path)!r}; predict them into different output folders")
    stems[_stem(path)] = path
  dataset_info = dataset_info or predictor.dataset_info()
  options = predictor.options
  os.makedirs(os.path.join(output_dir, "overlays"), exist_ok=True)
  panoptic_output = _PanopticOutput(output_dir, output_format, options, dataset_info)
  colormap = _overlay_colormap(dataset_info)
  class_names = list(dataset_info.class_names) if dataset_info else None
  bar = _Progress(len(paths), enabled=progress)
  records, skipped = [], []
  for group, images in _batches(paths, batch_size, skip_unreadable, skipped):
    outputs = predictor(images)
    for i, path in enumerate(group):
      panoptic = outputs["panoptic"][i]
      stem = _stem(path)
      panoptic_output.write(stem, panoptic)
      colored = visualization.colorize_panoptic(panoptic, options.label_divisor, colormap)
      boundaries = visualization.instance_boundaries(panoptic)
      Image.fromarray(visualization.overlay(images[i], colored, overlay_alpha,
                                            boundaries)).save(
                                                os.path.join(output_dir, "overlays",
                                                             stem + ".png"))
      probs = outputs.get("semantic_probs")
      records.append({
          "file_name": path, "height": int(panoptic.shape[0]),
          "width": int(panoptic.shape[1]),
          "segments_info": segments_info(
              panoptic, options, outputs["instance_panoptic_ids"][i],
              outputs["instance_scores"][i], None if probs is None else probs[i],
              class_names)})
    bar.update(len(group))
  if skipped:
    bar.update(len(skipped))
  panoptic_output.close()
  segments_file = os.path.join(output_dir, "segments.json")
  with open(segments_file, "w", encoding="utf-8") as f:
    json.dump({"label_divisor": options.label_divisor, "ignore_label": options.ignore_label,
               "images": records, "skipped": skipped}, f, indent=1)
  return {"num_images": len(records), "skipped": skipped, "segments_file": segments_file}


__all__ = ["KerasPredictor", "OUTPUT_FORMATS", "SavedModelPredictor", "collect_images",
           "predict_images", "read_image", "segments_info"]
