"""Prediction on image files, for every task: PNGs, overlays, JSON.

A *predictor* maps a uint8 batch `[batch, height, width, 3]` to a dict of NumPy outputs,
as the exported `serving_default` signature does, and names its task (`predictor.task`,
a `model.meta_architecture`):

* `SavedModelPredictor(export_dir)` runs an exported SavedModel (base dir or version dir);
* `KerasPredictor(model, serving_options, task)` runs the same serving graph in-process.

`predict_images(predictor, inputs, output_dir, ...)` writes, for each image `<stem>`:

* panoptic (`panoptic_deeplab`):
  * `panoptic/<stem>.png` (+ `panoptic.json`) in the dataset's official format:
    `output_format="coco"` (COCO panoptic results), `"cityscapes"` (`<id>_panoptic.png`),
    or `"generic"`: an RGB PNG of our own ids `semantic * label_divisor + instance`
    encoded as `R + 256 G + 256² B` (void = `ignore_label * label_divisor`);
  * `overlays/<stem>.png`: the panoptic colouring blended over the image, white
    boundaries between segments;
  * one `segments.json`: per image, each segment's `id` (our panoptic id), `category_id`
    (train id), `category` (name), `isthing`, `area`, `bbox` `[x, y, width, height]` and
    `score` (instance score for things; mean class probability for stuff when available);
* semantic (`semantic`):
  * `semantic/<stem>.png`: the class ids (8-bit grey, 16-bit above 255 classes; void =
    `ignore_label`);
  * `colored/<stem>.png`: the classes in the dataset palette
    (`visualization.dataset_colormap`), `overlays/<stem>.png`: blended over the image with
    white class boundaries;
  * `boundary/<stem>.png` (Gated-SCNN): boundary probability × 255, 8-bit grey;
* classification (`classification`): one `predictions.jsonl`, a line per image
  `{"image": path, "classes": [top-5 ids], "probabilities": [their probabilities],
  "class_names": [their names]}` (names when the dataset is known).
"""
import glob
import io
import json
import os

import numpy as np
import tensorflow as tf
from PIL import Image

from deeplab_axial import progress as progress_lib
from deeplab_axial import visualization
from deeplab_axial.data import encoding
from deeplab_axial.data import prediction_writers
from deeplab_axial.export import saved_model

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
OUTPUT_FORMATS = ("generic", "coco", "cityscapes")
PANOPTIC, SEMANTIC, CLASSIFICATION = "panoptic_deeplab", "semantic", "classification"


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
    self.options = saved_model.ServingOptions.from_json(self.metadata["serving_options"])
    # Exports written before the metadata recorded the task were all panoptic.
    self.task = self.metadata.get("task", PANOPTIC)
    self._signature = tf.saved_model.load(self.export_dir).signatures[
        saved_model.DEFAULT_SIGNATURE]

  def dataset_info(self):
    """The DatasetInfo recorded at export time, or None."""
    fields = self.metadata.get("dataset")
    if not fields:
      return None
    from deeplab_axial.data import datasets  # pylint: disable=import-outside-toplevel
    return datasets.dataset_info_from_dict(fields)

  def __call__(self, images):
    outputs = self._signature(images=tf.constant(images, tf.uint8))
    return {key: value.numpy() for key, value in outputs.items()}


class KerasPredictor:
  """Runs the serving graph of `model` in-process (e.g. a model restored from a checkpoint).

  Args:
    model: the task's `tf_keras.Model`.
    options: a `deeplab_axial.export.ServingOptions`.
    task: the `deeplab_axial.tasks.Task` of the model (its `serving_module` is run);
      None = a Panoptic-DeepLab model.
  """

  def __init__(self, model, options, task=None):
    self.options = options
    self._module = (task.serving_module(model, options) if task is not None
                    else saved_model.PanopticServingModule(model, options))
    self.task = self._module.TASK

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


def segments_info(panoptic, options, instance_panoptic_ids=None, instance_scores=None,
                  semantic_probs=None, class_names=None):
  """Per-segment records of one panoptic map (void excluded).

  Args:
    panoptic: int `[height, width]` panoptic map.
    options: the `PostProcessingOptions` (label_divisor, ignore_label, thing_class_ids).
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
      Image.fromarray(encoding.id_to_rgb(panoptic)).save(
          os.path.join(self.png_dir, stem + ".png"))
    elif self.output_format == "coco":
      self.writer.write(stem, panoptic)
    else:
      self.writer.write(stem.replace("_leftImg8bit", ""), panoptic)

  def close(self):
    if self.writer is not None:
      self.writer.close()


def _colormap(dataset_info):
  return None if dataset_info is None else visualization.dataset_colormap(dataset_info)


class _PanopticWriter:
  """Panoptic PNGs, overlays and segments.json (see the module docstring)."""

  def __init__(self, output_dir, options, dataset_info, output_format, overlay_alpha):
    self.output_dir = output_dir
    self.options = options
    self.overlay_alpha = overlay_alpha
    os.makedirs(os.path.join(output_dir, "overlays"), exist_ok=True)
    self.panoptic_output = _PanopticOutput(output_dir, output_format, options,
                                           dataset_info)
    self.colormap = _colormap(dataset_info)
    self.class_names = list(dataset_info.class_names) if dataset_info else None
    self.records = []

  def write(self, path, image, outputs):
    panoptic, stem = outputs["panoptic"], _stem(path)
    self.panoptic_output.write(stem, panoptic)
    colored = visualization.colorize_panoptic(panoptic, self.options.label_divisor,
                                              self.colormap)
    boundaries = visualization.instance_boundaries(panoptic)
    Image.fromarray(visualization.overlay(image, colored, self.overlay_alpha,
                                          boundaries)).save(
                                              os.path.join(self.output_dir, "overlays",
                                                           stem + ".png"))
    self.records.append({
        "file_name": path, "height": int(panoptic.shape[0]),
        "width": int(panoptic.shape[1]),
        "segments_info": segments_info(
            panoptic, self.options, outputs["instance_panoptic_ids"],
            outputs["instance_scores"], outputs.get("semantic_probs"), self.class_names)})

  def close(self, skipped):
    self.panoptic_output.close()
    segments_file = os.path.join(self.output_dir, "segments.json")
    with open(segments_file, "w", encoding="utf-8") as f:
      json.dump({"label_divisor": self.options.label_divisor,
                 "ignore_label": self.options.ignore_label, "images": self.records,
                 "skipped": skipped}, f, indent=1)
    return {"segments_file": segments_file}


class _SemanticWriter:
  """Class-id PNGs, palette PNGs, overlays (and boundary PNGs); see the module doc."""

  FOLDERS = ("semantic", "colored", "overlays", "boundary")

  def __init__(self, output_dir, dataset_info, overlay_alpha):
    self.output_dir = output_dir
    self.overlay_alpha = overlay_alpha
    self.colormap = _colormap(dataset_info)
    for folder in self.FOLDERS:
      os.makedirs(os.path.join(output_dir, folder), exist_ok=True)

  def _path(self, folder, path):
    return os.path.join(self.output_dir, folder, _stem(path) + ".png")

  def write(self, path, image, outputs):
    semantic = outputs["semantic"]
    # 8-bit PNGs hold ids up to 255 (void is usually 255); larger ids need 16 bits.
    ids = semantic.astype(np.uint8 if semantic.max() <= 255 else np.uint16)
    Image.fromarray(ids).save(self._path("semantic", path))
    colored = visualization.colorize_semantic(semantic, self.colormap)
    Image.fromarray(colored).save(self._path("colored", path))
    Image.fromarray(visualization.overlay(
        image, colored, self.overlay_alpha,
        visualization.instance_boundaries(semantic))).save(self._path("overlays", path))
    if "boundary" in outputs:
      Image.fromarray(np.round(outputs["boundary"] * 255).astype(np.uint8)).save(
          self._path("boundary", path))

  def close(self, skipped):
    del skipped
    return {}


class _ClassificationWriter:
  """One JSON line per image in predictions.jsonl (see the module docstring)."""

  def __init__(self, output_dir, dataset_info):
    os.makedirs(output_dir, exist_ok=True)
    self.path = os.path.join(output_dir, "predictions.jsonl")
    self.class_names = list(dataset_info.class_names) if dataset_info else None
    self.file = open(self.path, "w", encoding="utf-8")  # pylint: disable=consider-using-with

  def write(self, path, image, outputs):
    del image
    classes = [int(c) for c in outputs["top_5"]]
    record = {"image": path, "classes": classes,
              "probabilities": [float(outputs["probabilities"][c]) for c in classes]}
    if self.class_names:
      record["class_names"] = [self.class_names[c] for c in classes]
    self.file.write(json.dumps(record) + "\n")

  def close(self, skipped):
    del skipped
    self.file.close()
    return {"predictions_file": self.path}


def _writer(task, output_dir, options, dataset_info, output_format, overlay_alpha):
  if task not in (PANOPTIC, SEMANTIC, CLASSIFICATION):
    raise ValueError(f"cannot write predictions of task {task!r}; expected one of "
                     f"{[PANOPTIC, SEMANTIC, CLASSIFICATION]}")
  if task == PANOPTIC:
    return _PanopticWriter(output_dir, options.post_processing, dataset_info, output_format,
                           overlay_alpha)
  if output_format != "generic":
    raise ValueError(f"output_format={output_format!r} is for panoptic models; a {task} "
                     f"model writes the generic outputs only")
  if task == SEMANTIC:
    return _SemanticWriter(output_dir, dataset_info, overlay_alpha)
  return _ClassificationWriter(output_dir, dataset_info)


def predict_images(predictor, inputs, output_dir, *, dataset_info=None,
                   output_format="generic", batch_size=1, overlay_alpha=0.5,
                   skip_unreadable=False, progress=True):
  """Predicts every image of `inputs` and writes the task's files (module docstring).

  Args:
    predictor: `SavedModelPredictor` or `KerasPredictor` (see the module docstring).
    inputs: image files, folders or glob patterns (see `collect_images`).
    output_dir: output folder (created).
    dataset_info: `DatasetInfo` for class names, colours and official category ids;
      default: the one recorded in the SavedModel, if any.
    output_format: "generic", "coco" or "cityscapes" (the latter two: panoptic only).
    batch_size: images per predictor call (consecutive images of one size are batched).
    overlay_alpha: weight of the colouring in the overlays.
    skip_unreadable: skip (and list) unreadable images instead of raising.
    progress: print a progress bar (stdout).

  Returns:
    Dict `num_images` (written), `skipped` (paths) and the task's summary file:
    `segments_file` (panoptic) or `predictions_file` (classification).

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
  writer = _writer(predictor.task, output_dir, predictor.options, dataset_info,
                   output_format, overlay_alpha)
  bar = progress_lib.ProgressBar(len(paths), "predict", unit="img",
                                 stream=None if progress else io.StringIO())
  written, skipped = 0, []
  for group, images in _batches(paths, batch_size, skip_unreadable, skipped):
    outputs = predictor(images)
    for i, path in enumerate(group):
      writer.write(path, images[i], {key: value[i] for key, value in outputs.items()})
    written += len(group)
    bar.update(len(group))
  if skipped:
    bar.update(len(skipped))
  bar.close()
  return {"num_images": written, "skipped": skipped, **writer.close(skipped)}


__all__ = ["CLASSIFICATION", "KerasPredictor", "OUTPUT_FORMATS", "PANOPTIC", "SEMANTIC", "SavedModelPredictor", "collect_images",
           "predict_images", "read_image", "segments_info"]
