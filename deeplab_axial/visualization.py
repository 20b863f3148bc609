"""Colour semantic and panoptic maps, draw instance boundaries and blend with images.

Pure NumPy; every function takes and returns NumPy arrays (`uint8` images `[h, w, 3]`), so
results can be written with PIL (`PIL.Image.fromarray(colored).save(path)`).
"""
import numpy as np


def create_colormap(num_colors=256):
  """The PASCAL VOC colormap: distinct, deterministic colours for ids 0..num_colors-1.

  Colour bits are spread from the id: bit 3·j + c of the id sets bit 7 − j of channel c
  (c = red, green, blue), so small ids get very different colours; id 0 is black.

  Args:
    num_colors: number of entries, in [1, 512] (more would repeat colours).

  Returns:
    uint8 `[num_colors, 3]`.
  """
  if isinstance(num_colors, bool) or not isinstance(num_colors, (int, np.integer)) or not (
      1 <= num_colors <= 512):
    raise ValueError(f"`num_colors` must be an int in [1, 512], got {num_colors!r}.")
  ids = np.arange(num_colors)
  colormap = np.zeros((num_colors, 3), dtype=np.int64)
  for bit_group in range(8):
    for channel in range(3):
      bit = (ids >> (3 * bit_group + channel)) & 1
      colormap[:, channel] |= bit << (7 - bit_group)
  return colormap.astype(np.uint8)


def dataset_colormap(dataset_info):
  """uint8 `[max(256, ignore_label + 1), 3]`: a dataset's class colours, void black.

  Ids that are neither a class nor void get `create_colormap`'s colours.
  """
  colormap = create_colormap(max(256, dataset_info.ignore_label + 1))
  colormap[:dataset_info.num_classes] = np.asarray(dataset_info.colormap, np.uint8)
  colormap[dataset_info.ignore_label] = 0
  return colormap


def _as_colormap(colormap, needed, argument):
  colormap = create_colormap(max(needed, 256)) if colormap is None else np.asarray(colormap)
  if colormap.ndim != 2 or colormap.shape[1] != 3:
    raise ValueError(f"`colormap` must have shape [num_colors, 3], got {colormap.shape}.")
  if len(colormap) < needed:
    raise ValueError(f"`{argument}` holds class id {needed - 1} but `colormap` has only "
                     f"{len(colormap)} colours.")
  return colormap.astype(np.uint8)


def _as_label_map(labels, argument):
  labels = np.asarray(labels)
  if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f"`{argument}` must be an integer map [height, width], got dtype "
                     f"{labels.dtype} and shape {labels.shape}.")
  if labels.size and labels.min() < 0:
    raise ValueError(f"`{argument}` must be non-negative, found {labels.min()}.")
  return labels


def colorize_semantic(semantic, colormap=None):
  """Colours a semantic map.

  Args:
    semantic: integer `[height, width]` class ids (>= 0).
    colormap: uint8 `[num_colors, 3]`; default `create_colormap()`.

  Returns:
    uint8 `[height, width, 3]`.
  """
  semantic = _as_label_map(semantic, "semantic")
  needed = int(semantic.max()) + 1 if semantic.size else 1
  return _as_colormap(colormap, needed, "semantic")[semantic]


def colorize_panoptic(panoptic, label_divisor, colormap=None, perturbation=48, seed=0):
  """Colours a panoptic map; instances of one class get distinct nearby colours.

  Stuff and crowd pixels (instance id 0) get their class colour. Each thing instance gets
  its class colour shifted by a random offset in [−perturbation, perturbation] per channel
  (deterministic for a given `seed` and segment id), redrawn until it differs from every
  other segment colour in the image.

  Args:
    panoptic: integer `[height, width]`, `semantic_id * label_divisor + instance_id`.
    label_divisor: the dataset's label divisor.
    colormap: uint8 `[num_colors, 3]` indexed by semantic id; default `create_colormap()`.
    perturbation: maximum colour shift per channel.
    seed: seed of the colour shifts.

  Returns:
    uint8 `[height, width, 3]`.
  """
  panoptic = _as_label_map(panoptic, "panoptic")
  if isinstance(label_divisor, bool) or not isinstance(label_divisor, (int, np.integer)) or (
      label_divisor < 1):
    raise ValueError(f"`label_divisor` must be a positive int, got {label_divisor!r}.")
  if isinstance(perturbation, bool) or not 0 <= perturbation <= 127:
    raise ValueError(f"`perturbation` must be in [0, 127], got {perturbation!r}.")
  segment_ids, inverse = np.unique(panoptic, return_inverse=True)
  semantic_ids = segment_ids // label_divisor
  colormap = _as_colormap(colormap, int(semantic_ids.max()) + 1 if segment_ids.size else 1,
                          "panoptic")
  colors = colormap[semantic_ids].astype(np.int64)
  used = {tuple(color) for color, segment in zip(colors, segment_ids)
          if segment % label_divisor == 0}
  for index, segment in enumerate(segment_ids):
    if segment % label_divisor == 0:
      continue
    rng = np.random.default_rng([seed, int(segment)])
    color = colors[index]
    for _ in range(100):
      candidate = np.clip(colors[index] + rng.integers(-perturbation, perturbation + 1, 3),
                          0, 255)
      if tuple(candidate) not in used:
        color = candidate
        break
    used.add(tuple(color))
    colors[index] = color
  return colors.astype(np.uint8)[inverse.reshape(panoptic.shape)]


def instance_boundaries(panoptic, thickness=1):
  """Marks pixels on the border between two different segments.

  A pixel is a boundary pixel when one of its 4-neighbours has a different id, so both
  sides of a border are marked; `thickness > 1` grows the marks by `thickness − 1` pixels
  (4-connected dilation).

  Args:
    panoptic: integer `[height, width]` segment ids (panoptic, instance or semantic map).
    thickness: positive int.

  Returns:
    bool `[height, width]`.
  """
  panoptic = _as_label_map(panoptic, "panoptic")
  if isinstance(thickness, bool) or not isinstance(thickness, (int, np.integer)) or (
      thickness < 1):
    raise ValueError(f"`thickness` must be a positive int, got {thickness!r}.")
  boundary = np.zeros(panoptic.shape, dtype=bool)
  vertical = panoptic[1:, :] != panoptic[:-1, :]
  horizontal = panoptic[:, 1:] != panoptic[:, :-1]
  boundary[1:, :] |= vertical
  boundary[:-1, :] |= vertical
  boundary[:, 1:] |= horizontal
  boundary[:, :-1] |= horizontal
  for _ in range(thickness - 1):
    grown = boundary.copy()
    grown[1:, :] |= boundary[:-1, :]
    grown[:-1, :] |= boundary[1:, :]
    grown[:, 1:] |= boundary[:, :-1]
    grown[:, :-1] |= boundary[:, 1:]
    boundary = grown
  return boundary


def overlay(image, colored, alpha=0.5, boundaries=None, boundary_color=(255, 255, 255)):
  """Blends a coloured map over an image and optionally paints boundaries.

  Args:
    image: uint8 `[height, width, 3]` (a `[height, width]` grey image is repeated to RGB).
    colored: uint8 `[height, width, 3]`, e.g. from `colorize_panoptic`.
    alpha: weight of `colored`: `round(alpha * colored + (1 − alpha) * image)`.
    boundaries: optional bool `[height, width]` (e.g. `instance_boundaries(...)`).
    boundary_color: RGB colour painted on boundary pixels.

  Returns:
    uint8 `[height, width, 3]`.
  """
  image = np.asarray(image)
  colored = np.asarray(colored)
  if image.ndim == 2:
    image = np.repeat(image[..., None], 3, axis=-1)
  if image.ndim != 3 or image.shape[-1] != 3:
    raise ValueError(f"`image` must be [height, width, 3] (or [height, width]), got shape "
                     f"{image.shape}.")
  if colored.shape != image.shape:
    raise ValueError(f"`colored` shape {colored.shape} must equal the image shape "
                     f"{image.shape}.")
  if not 0.0 <= alpha <= 1.0:
    raise ValueError(f"`alpha` must be in [0, 1], got {alpha!r}.")
  blended = alpha * colored.astype(np.float64) + (1.0 - alpha) * image.astype(np.float64)
  blended = np.clip(np.round(blended), 0, 255).astype(np.uint8)
  if boundaries is not None:
    boundaries = np.asarray(boundaries, dtype=bool)
    if boundaries.shape != image.shape[:2]:
      raise ValueError(f"`boundaries` shape {boundaries.shape} must equal the image size "
                       f"{image.shape[:2]}.")
    blended[boundaries] = np.asarray(boundary_color, dtype=np.uint8)
  return blended
