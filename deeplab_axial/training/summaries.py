"""TensorBoard summaries of evaluation: metric scalars and panoptic prediction images."""
import numpy as np
import tensorflow as tf

from deeplab_axial import visualization
from deeplab_axial.data import pipeline
from deeplab_axial.tasks import tta

PANOPTIC_IMAGE_TAG = "panoptic/image_groundtruth_prediction"


def write_scalars(writer, step, metrics, prefix="metrics"):
  """Writes every scalar entry of `metrics` as `{prefix}/{name}` at `step`.

  Args:
    writer: a `tf.summary` writer.
    step: int global step.
    metrics: dict name -> number (Python/NumPy scalar or 0-d tensor). Non-scalar entries
      such as the per-class arrays of an evaluation are skipped.
    prefix: tag prefix ("" for none).

  Raises:
    ValueError: an entry is neither a number nor an array of numbers.
  """
  with writer.as_default(step=int(step)):
    for name, value in sorted(metrics.items()):
      value = np.asarray(value)
      if not (np.issubdtype(value.dtype, np.number) or value.dtype == np.bool_):
        raise ValueError(f"metrics[{name!r}] must be a number, got {value!r}")
      if value.ndim == 0:
        tf.summary.scalar(f"{prefix}/{name}" if prefix else name, float(value))
  writer.flush()


def panoptic_comparison_panels(images, panoptic_predictions, panoptic_ground_truth,
                               dataset_info):
  """Image | colourised ground truth | colourised prediction, side by side.

  Segments get their class colour (instances of a class nearby distinct shades, see
  `visualization.colorize_panoptic`), void is black, and segment borders are white.

  Args:
    images: `[batch, height, width, 3]` in [0, 255] (uint8 or float).
    panoptic_predictions, panoptic_ground_truth: integer `[batch, height, width]`,
      `semantic * label_divisor + instance`.
    dataset_info: the dataset's `DatasetInfo` (label divisor, colours, void id).

  Returns:
    uint8 `[batch, height, 3 * width, 3]`.

  Raises:
    ValueError: for inconsistent shapes.
  """
  images = np.asarray(images)
  predictions = np.asarray(panoptic_predictions)
  ground_truth = np.asarray(panoptic_ground_truth)
  if images.ndim != 4 or images.shape[-1] != 3:
    raise ValueError(f"images must be [batch, height, width, 3], got shape {images.shape}")
  for name, labels in (("panoptic_predictions", predictions),
                       ("panoptic_ground_truth", ground_truth)):
    if labels.shape != images.shape[:3]:
      raise ValueError(f"{name} must be [batch, height, width] = {images.shape[:3]} like "
                       f"the images, got shape {labels.shape}")
  colormap = visualization.dataset_colormap(dataset_info)
  label_divisor = int(dataset_info.label_divisor)

  def colorize(panoptic):
    colored = visualization.colorize_panoptic(panoptic.astype(np.int64), label_divisor,
                                              colormap)
    colored[visualization.instance_boundaries(panoptic)] = 255
    return colored

  image_panels = np.clip(np.round(images.astype(np.float64)), 0, 255).astype(np.uint8)
  return np.stack([np.concatenate([image, colorize(truth), colorize(prediction)], axis=1)
                   for image, truth, prediction in zip(image_panels, ground_truth,
                                                       predictions)])


def write_panoptic_images(writer, step, images, panoptic_predictions,
                          panoptic_ground_truth, dataset_info, max_images=3):
  """Writes up to `max_images` image | ground truth | prediction panels at `step`.

  Tag `PANOPTIC_IMAGE_TAG`; each panel is uint8 `[height, 3 * width, 3]`. Arguments as in
  `panoptic_comparison_panels`, plus the `tf.summary` `writer`, the int `step` and
  `max_images` (a positive int).

  Returns:
    The number of panels written.
  """
  if isinstance(max_images, bool) or not isinstance(max_images, int) or max_images < 1:
    raise ValueError(f"max_images must be a positive int, got {max_images!r}")
  panels = panoptic_comparison_panels(
      np.asarray(images)[:max_images], np.asarray(panoptic_predictions)[:max_images],
      np.asarray(panoptic_ground_truth)[:max_images], dataset_info)
  with writer.as_default(step=int(step)):
    tf.summary.image(PANOPTIC_IMAGE_TAG, panels, max_outputs=max_images,
                     description="input image | ground truth | prediction")
  writer.flush()
  return len(panels)


def sample_panoptic_predictions(model_fn, post_process_fn, dataset, max_images=3):
  """Predicts the first `max_images` examples of `dataset` on the host (no strategy).

  Args:
    model_fn: images -> dict of head outputs (see `tasks.tta.predict_with_tta`).
    post_process_fn: `(semantic_probs, center_heatmap, center_offset) -> dict` with
      `panoptic`, e.g. a `tasks.PostProcessingOptions`.
    dataset: a `tf.data.Dataset` of batches with `image` and `panoptic`.
    max_images: how many examples (from the first batch).

  Returns:
    NumPy `(images, panoptic_predictions, panoptic_ground_truth)` for
    `write_panoptic_images`.
  """
  batch = {key: value[:max_images] for key, value in next(iter(dataset.take(1))).items()}
  predictions = tta.predict_with_tta(model_fn, batch["image"])
  panoptic = post_process_fn(predictions["semantic_probs"], predictions["center_heatmap"],
                             predictions["center_offset"])["panoptic"]
  # dataset.resize_long_side: show image and prediction at the label's original size.
  images = pipeline.predictions_to_label_frame(batch["image"], batch)
  panoptic = pipeline.predictions_to_label_frame(panoptic, batch)
  return images.numpy(), panoptic.numpy(), batch["panoptic"].numpy()
