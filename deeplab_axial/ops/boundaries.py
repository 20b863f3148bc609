"""Boundary maps for Gated-SCNN: targets from semantic labels and image gradients.

All functions are pure TensorFlow (no NumPy/OpenCV), run inside `tf.data` on one image
or on a batch, under `tf.function` and XLA, with unknown height/width.

* `semantic_boundaries`: the Gated-SCNN boundary target. A pixel is a boundary pixel when
  a pixel of a different label lies within Euclidean distance `width` of it. This is the
  band the official `edge_utils.onehot_to_binary_edges` marks with a distance transform
  (radius 2 there), computed here with one comparison per integer offset in the disk.
* `class_boundaries`: the 1-pixel inner contour of a binary mask (for the boundary F-score).
* `binary_dilation`: dilation of a binary map by a Euclidean disk (tolerance matching).
* `image_gradient_magnitude`: Sobel gradient magnitude of the grayscale image, a pure-TF
  stand-in for the Canny map Gated-SCNN fuses into its shape stream (the official code
  calls OpenCV's Canny, which has no TF op and no XLA lowering).
"""
import math
from typing import List, Tuple

import tensorflow as tf

# ITU-R BT.601 luma weights, as tf.image.rgb_to_grayscale uses.
_LUMA_WEIGHTS = (0.2989, 0.5870, 0.1140)


def disk_offsets(radius: int) -> List[Tuple[int, int]]:
  """Integer offsets (dy, dx) with dy² + dx² <= radius², the centre excluded."""
  return [(dy, dx)
          for dy in range(-radius, radius + 1)
          for dx in range(-radius, radius + 1)
          if (dy, dx) != (0, 0) and dy * dy + dx * dx <= radius * radius]


def _check_radius(name, value):
  if isinstance(value, bool) or not isinstance(value, int) or value < 0:
    raise ValueError(f"{name} must be a non-negative int (pixels), got {value!r}")


def semantic_boundaries(labels: tf.Tensor, ignore_label: int = 255,
                        width: int = 2) -> tf.Tensor:
  """Binary boundary targets from a semantic label map.

  A pixel is a boundary (1) when some pixel within Euclidean distance `width` has a
  different label; pixels outside the image do not count. The void region (`ignore_label`)
  is treated as one more region, so a valid pixel next to void is a boundary, as in the
  official code; void pixels themselves get `ignore_label` so losses and metrics skip them.

  Cost: one shifted comparison per offset in the disk (13 for width 2, about π·width²).

  Args:
    labels: integer semantic labels, `[height, width]` or `[batch, height, width]`.
    ignore_label: the void label.
    width: half-width of the boundary band in pixels (the band is about 2·width wide
      across each boundary); 0 gives no boundary pixels.

  Returns:
    int32 tensor with the shape of `labels`: 1 boundary, 0 interior, `ignore_label` void.
  """
  _check_radius("width", width)
  labels = tf.convert_to_tensor(labels)
  if not labels.dtype.is_integer:
    raise ValueError(f"labels must be an integer tensor, got dtype {labels.dtype.name}")
  if labels.shape.rank not in (2, 3):
    raise ValueError(f"labels must have shape [height, width] or [batch, height, width], "
                     f"got shape {labels.shape}")
  single_image = labels.shape.rank == 2
  batch = tf.cast(labels, tf.int32)
  if single_image:
    batch = batch[tf.newaxis]
  height, width_px = tf.shape(batch)[1], tf.shape(batch)[2]
  # -1 marks "outside the image"; valid labels and ignore_label are >= 0.
  padded = tf.pad(batch, [[0, 0], [width, width], [width, width]], constant_values=-1)
  is_boundary = tf.zeros_like(batch, dtype=tf.bool)
  for dy, dx in disk_offsets(width):
    neighbour = padded[:, width + dy:width + dy + height, width + dx:width + dx + width_px]
    is_boundary = tf.logical_or(
        is_boundary, tf.logical_and(neighbour >= 0, tf.not_equal(neighbour, batch)))
  targets = tf.where(tf.equal(batch, ignore_label), ignore_label,
                     tf.cast(is_boundary, tf.int32))
  return targets[0] if single_image else targets


def class_boundaries(masks: tf.Tensor) -> tf.Tensor:
  """1-pixel inner contour of binary masks (4-connectivity).

  A mask pixel is on the contour when one of its 4 neighbours inside the image is not in
  the mask; the image border itself is not a contour.

  Args:
    masks: bool `[batch, height, width, channels]`, one binary mask per channel.

  Returns:
    bool tensor of the same shape.
  """
  masks = tf.convert_to_tensor(masks)
  if masks.dtype != tf.bool or masks.shape.rank != 4:
    raise ValueError(f"masks must be a bool [batch, height, width, channels] tensor, got "
                     f"dtype {masks.dtype.name} shape {masks.shape}")
  # Edge padding: outside the image counts as "same as the border pixel".
  padded = tf.pad(tf.cast(masks, tf.int8), [[0, 0], [1, 1], [1, 1], [0, 0]],
                  mode="SYMMETRIC")
  height, width = tf.shape(masks)[1], tf.shape(masks)[2]
  eroded = masks
  for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1)):
    neighbour = padded[:, 1 + dy:1 + dy + height, 1 + dx:1 + dx + width, :]
    eroded = tf.logical_and(eroded, tf.cast(neighbour, tf.bool))
  return tf.logical_and(masks, tf.logical_not(eroded))


def binary_dilation(masks: tf.Tensor, radius: int) -> tf.Tensor:
  """Dilates binary maps by a Euclidean disk of `radius` pixels.

  Computed as one depthwise convolution with the disk as kernel (cost (2r+1)² per pixel),
  which XLA compiles and which does not grow the graph with the radius.

  Args:
    masks: bool `[batch, height, width, channels]`.
    radius: non-negative int.

  Returns:
    bool tensor of the same shape: True where a True pixel lies within `radius`.
  """
  _check_radius("radius", radius)
  masks = tf.convert_to_tensor(masks)
  if masks.dtype != tf.bool or masks.shape.rank != 4:
    raise ValueError(f"masks must be a bool [batch, height, width, channels] tensor, got "
                     f"dtype {masks.dtype.name} shape {masks.shape}")
  if radius == 0:
    return masks
  size = 2 * radius + 1
  disk = [[1.0 if (y - radius)**2 + (x - radius)**2 <= radius * radius else 0.0
           for x in range(size)] for y in range(size)]
  channels = masks.shape[-1]
  if channels is None:
    raise ValueError("masks must have a known channel dimension")
  kernel = tf.tile(tf.constant(disk, tf.float32)[:, :, None, None], [1, 1, channels, 1])
  counts = tf.nn.depthwise_conv2d(tf.cast(masks, tf.float32), kernel, [1, 1, 1, 1], "SAME")
  return counts > 0.5


def image_gradient_magnitude(images: tf.Tensor, value_range: float = 255.0) -> tf.Tensor:
  """Sobel gradient magnitude of the grayscale image, scaled to [0, 1].

  The image is converted to luma, padded by reflection and filtered with the 3×3 Sobel
  kernels; the magnitude is divided by its largest possible value, 4·√2·value_range, so
  the output does not depend on the image content (a flat image gives exactly 0).

  Args:
    images: float `[batch, height, width, channels]` with 1 (gray) or 3 (RGB) channels,
      values in [0, value_range].
    value_range: the largest pixel value (255 for the task models' raw input).

  Returns:
    float32 `[batch, height, width, 1]` in [0, 1].
  """
  images = tf.convert_to_tensor(images)
  if images.shape.rank != 4 or images.shape[-1] not in (1, 3):
    raise ValueError(f"images must have shape [batch, height, width, 1 or 3], got "
                     f"{images.shape}")
  if not value_range > 0:
    raise ValueError(f"value_range must be > 0, got {value_range!r}")
  images = tf.cast(images, tf.float32)
  if images.shape[-1] == 3:
    gray = tf.reduce_sum(images * tf.constant(_LUMA_WEIGHTS), axis=-1, keepdims=True)
  else:
    gray = images
  padded = tf.pad(gray, [[0, 0], [1, 1], [1, 1], [0, 0]], mode="REFLECT")
  sobel_x = tf.constant([[-1., 0., 1.], [-2., 0., 2.], [-1., 0., 1.]])
  kernels = tf.stack([sobel_x, tf.transpose(sobel_x)], axis=-1)[:, :, tf.newaxis, :]
  gradients = tf.nn.conv2d(padded, kernels, strides=1, padding="VALID")
  magnitude = tf.sqrt(tf.reduce_sum(tf.square(gradients), axis=-1, keepdims=True))
  return magnitude / (4.0 * math.sqrt(2.0) * value_range)
