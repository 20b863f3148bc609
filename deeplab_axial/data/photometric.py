"""Photometric (colour) augmentation of float RGB images in [0, 255]; labels never change.

Each operation has one definition, applied to an image `[h, w, 3]` (any leading batch
dims work too) and clipped back to [0, 255]:

  * brightness: `x + delta` (delta in 0-255 units);
  * contrast: `m + f · (x - m)` with `m` the image's mean luma (one scalar per image, as
    PIL's `ImageEnhance.Contrast` and torchvision's `adjust_contrast`);
  * saturation: `g + f · (x - g)` with `g` each pixel's luma (blend with the grayscale
    image, as PIL/torchvision); f = 0 gives grayscale, 1 the image;
  * hue: rotate each pixel's HSV hue by `delta` turns (delta in [-0.5, 0.5]), keeping
    saturation and value.

Luma is ITU-R BT.601: 0.299 R + 0.587 G + 0.114 B.

`PhotometricOptions.apply` draws one factor per operation and image from its range with
stateless random ops and applies brightness, contrast, saturation, hue in that order.

Default ranges: DeepLab2 and Panoptic-DeepLab use no colour jitter (DeepLab2's newer
configs use AutoAugment instead), so the defaults are those of the SSD photometric
distortion as shipped by mmsegmentation (`PhotoMetricDistortion`: brightness ±32,
contrast and saturation 0.5-1.5, hue ±18/180 of a turn); unlike it, every operation is
always applied, with a factor drawn uniformly from its range (which contains the
identity).
"""
import dataclasses
from typing import Tuple

import tensorflow as tf

# ITU-R BT.601 luma weights of R, G, B.
LUMA_WEIGHTS = (0.299, 0.587, 0.114)


def _clip(image: tf.Tensor) -> tf.Tensor:
  return tf.clip_by_value(image, 0.0, 255.0)


def luma(image: tf.Tensor) -> tf.Tensor:
  """float [..., h, w, 3] -> [..., h, w, 1] BT.601 luma."""
  return tf.reduce_sum(image * tf.constant(LUMA_WEIGHTS, image.dtype), -1, keepdims=True)


def adjust_brightness(image: tf.Tensor, delta) -> tf.Tensor:
  """Adds `delta` (0-255 units) to every channel of float [h, w, 3] in [0, 255]."""
  return _clip(image + delta)


def adjust_contrast(image: tf.Tensor, factor) -> tf.Tensor:
  """Scales float [h, w, 3] in [0, 255] around its mean luma by `factor`."""
  mean = tf.reduce_mean(luma(image), axis=[-3, -2, -1], keepdims=True)
  return _clip(mean + factor * (image - mean))


def adjust_saturation(image: tf.Tensor, factor) -> tf.Tensor:
  """Blends float [h, w, 3] in [0, 255] with its grayscale: gray + factor·(x - gray)."""
  gray = luma(image)
  return _clip(gray + factor * (image - gray))


def adjust_hue(image: tf.Tensor, delta) -> tf.Tensor:
  """Rotates the HSV hue of float [h, w, 3] in [0, 255] by `delta` turns."""
  rotated = tf.image.adjust_hue(_clip(image) / 255.0, delta)
  return _clip(rotated * 255.0)


@dataclasses.dataclass(frozen=True)
class PhotometricOptions:
  """Random colour jitter; the defaults are `AugmentationOptions`' in experiment.proto.

  Attributes:
    brightness_delta: brightness delta drawn from [-delta, delta] (0-255 units).
    contrast_range: contrast factor range (low, high), 0 <= low <= high.
    saturation_range: saturation factor range (low, high), 0 <= low <= high.
    hue_delta: hue rotation drawn from [-delta, delta] turns, delta in [0, 0.5].
  """
  brightness_delta: float = 32.0
  contrast_range: Tuple[float, float] = (0.5, 1.5)
  saturation_range: Tuple[float, float] = (0.5, 1.5)
  hue_delta: float = 0.1

  def __post_init__(self):
    if self.brightness_delta < 0:
      raise ValueError(f"brightness_delta must be >= 0, got {self.brightness_delta}")
    if not 0 <= self.hue_delta <= 0.5:
      raise ValueError(f"hue_delta must be in [0, 0.5] turns, got {self.hue_delta}")
    for name in ("contrast_range", "saturation_range"):
      low, high = getattr(self, name)
      if not 0 <= low <= high:
        raise ValueError(f"{name} must satisfy 0 <= low <= high, got {(low, high)}")

  @classmethod
  def from_config(cls, augmentation) -> "PhotometricOptions":
    """The options of an `AugmentationOptions` proto (whether or not `photometric`)."""
    return cls(
        brightness_delta=augmentation.brightness_max_delta,
        contrast_range=(augmentation.contrast_min_factor, augmentation.contrast_max_factor),
        saturation_range=(augmentation.saturation_min_factor,
                          augmentation.saturation_max_factor),
        hue_delta=augmentation.hue_max_delta)

  def apply(self, image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """Jitters a float32 [h, w, 3] image in [0, 255]; `seed` is int [2]."""
    seeds = tf.random.experimental.stateless_split(seed, 4)

    def uniform(index, low, high):
      return tf.random.stateless_uniform([], seeds[index], low, high)

    image = _clip(image)
    if self.brightness_delta > 0:
      image = adjust_brightness(image, uniform(0, -self.brightness_delta,
                                               self.brightness_delta))
    if self.contrast_range != (1.0, 1.0):
      image = adjust_contrast(image, uniform(1, *self.contrast_range))
    if self.saturation_range != (1.0, 1.0):
      image = adjust_saturation(image, uniform(2, *self.saturation_range))
    if self.hue_delta > 0:
      image = adjust_hue(image, uniform(3, -self.hue_delta, self.hue_delta))
    return image


__all__ = ["LUMA_WEIGHTS", "PhotometricOptions", "adjust_brightness", "adjust_contrast",
           "adjust_hue", "adjust_saturation", "luma"]
