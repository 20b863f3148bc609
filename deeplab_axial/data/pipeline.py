"""tf.data input pipelines over the TFRecords written by `deeplab_axial.data.converters`.

Panoptic training (`build_panoptic_dataset(..., is_training=True)`):
  list_files -> [shard per input pipeline] -> parallel interleave of TFRecordDataset ->
  decode -> [cache] -> shuffle -> repeat -> augment (photometric, random scale (times
  the resize_long_side factor), random pad-and-crop with ignore, horizontal flip) ->
  Panoptic-DeepLab targets -> batch
  (drop_remainder, static shapes for XLA) -> prefetch.
Targets are generated after all geometric augmentation, so centres and offsets always
match the pixels the model sees. Every random op is stateless and seeded per example
from `tf.data.Dataset.random(seed)`, so a fixed `seed` reproduces the stream exactly.

Panoptic evaluation (`is_training=False`): no randomness; each image is padded at the
bottom/right to `crop_size` (image with `pad_value`, label with ignore), or, without a
crop size, each batch is padded to its largest image. `height`/`width` keep the original
size so predictions can be cropped back. With `resize_long_side` the image is resized
first and the label stays at its original size (`resize_predictions_to_original` maps
predictions back).
"""
from typing import Dict, Mapping, Optional, Sequence, Tuple

import tensorflow as tf

from deeplab_axial.data import datasets
from deeplab_axial.data import encoding
from deeplab_axial.data.photometric import PhotometricOptions
from deeplab_axial.data.encoding import Keys

AUTOTUNE = tf.data.AUTOTUNE


def graph_map_fn(fn):
  """`fn` for `Dataset.map`, left as written by autograph.

  tf.data runs map functions through autograph, which rewrites them and everything they
  call once per process; ours branch on tensors only through `tf.cond`, so the rewrite
  adds nothing but time (~5 s of a shapes-demo training process, ~2 s of an evaluation).
  """
  return tf.autograph.experimental.do_not_convert(fn)


DEFAULT_TARGET_OPTIONS = {"sigma": 8.0, "small_instance_area": 4096,
                          "small_instance_weight": 3.0}

_FEATURES = {
    Keys.IMAGE_ENCODED: tf.io.FixedLenFeature([], tf.string),
    Keys.IMAGE_FORMAT: tf.io.FixedLenFeature([], tf.string, default_value=""),
    Keys.IMAGE_HEIGHT: tf.io.FixedLenFeature([], tf.int64),
    Keys.IMAGE_WIDTH: tf.io.FixedLenFeature([], tf.int64),
    Keys.IMAGE_ID: tf.io.FixedLenFeature([], tf.string, default_value=""),
    Keys.IMAGE_FILENAME: tf.io.FixedLenFeature([], tf.string, default_value=""),
    Keys.PANOPTIC_ENCODED: tf.io.FixedLenFeature([], tf.string, default_value=""),
    Keys.LABEL_DIVISOR: tf.io.FixedLenFeature([], tf.int64, default_value=0),
    Keys.IGNORE_LABEL: tf.io.FixedLenFeature([], tf.int64,
                                             default_value=datasets.IGNORE_LABEL),
    Keys.CLASS_LABEL: tf.io.FixedLenFeature([], tf.int64, default_value=-1),
}


def decode_panoptic_png(encoded: tf.Tensor) -> tf.Tensor:
  """RGB id PNG bytes -> int32 [h, w] with R + 256·G + 256²·B."""
  rgb = tf.cast(tf.io.decode_png(encoded, channels=3), tf.int32)
  return encoding.pack_rgb_ids(rgb)


def decode_example(serialized: tf.Tensor, *, decode_panoptic: bool = True
                   ) -> Dict[str, tf.Tensor]:
  """Parses one serialized tf.train.Example of the schema in docs/data.md.

  Args:
    serialized: scalar string tensor.
    decode_panoptic: decode the panoptic PNG (set False for classification records).

  Returns:
    image: uint8 [h, w, 3].
    height, width: int32 scalars (the stored image size).
    image_id, image_name: string scalars (dataset image id; source file name).
    label: int32 scalar classification label (-1 if the record has none).
    With `decode_panoptic`:
      panoptic: int32 [h, w], semantic * label_divisor + instance; a record without a
        panoptic label (e.g. a test split) gives all `ignore_label * label_divisor`.
      label_divisor, ignore_label: int32 scalars stored with the record.
  """
  features = tf.io.parse_single_example(serialized, _FEATURES)
  image = tf.io.decode_image(features[Keys.IMAGE_ENCODED], channels=3,
                             expand_animations=False)
  image = tf.ensure_shape(image, [None, None, 3])
  height = tf.cast(features[Keys.IMAGE_HEIGHT], tf.int32)
  width = tf.cast(features[Keys.IMAGE_WIDTH], tf.int32)
  example = {
      "image": image,
      "height": height,
      "width": width,
      "image_id": features[Keys.IMAGE_ID],
      "image_name": features[Keys.IMAGE_FILENAME],
      "label": tf.cast(features[Keys.CLASS_LABEL], tf.int32),
  }
  if decode_panoptic:
    divisor = tf.cast(features[Keys.LABEL_DIVISOR], tf.int32)
    ignore_label = tf.cast(features[Keys.IGNORE_LABEL], tf.int32)
    encoded = features[Keys.PANOPTIC_ENCODED]
    panoptic = tf.cond(
        tf.strings.length(encoded) > 0, lambda: decode_panoptic_png(encoded),
        lambda: tf.fill(tf.shape(image)[:2], ignore_label * divisor))
    example.update(panoptic=tf.ensure_shape(panoptic, [None, None]), label_divisor=divisor,
                   ignore_label=ignore_label)
  return example


def _check_crop_size(crop_size) -> Tuple[int, int]:
  if (crop_size is None or len(crop_size) != 2 or
      not all(isinstance(v, int) and v > 0 for v in crop_size)):
    raise ValueError(f"crop_size must be (height, width) positive ints, got {crop_size!r}")
  return tuple(crop_size)


def random_scale_factor(seed: tf.Tensor, min_scale: float, max_scale: float,
                        scale_step: float) -> tf.Tensor:
  """A factor from {min, min+step, ..., max} (uniform on [min, max] if step is 0)."""
  if scale_step > 0:
    num_steps = int(round((max_scale - min_scale) / scale_step))
    index = tf.random.stateless_uniform([], seed, 0, num_steps + 1, dtype=tf.int32)
    return min_scale + tf.cast(index, tf.float32) * scale_step
  return tf.random.stateless_uniform([], seed, min_scale, max_scale)


def resize_image_and_label(image: tf.Tensor, panoptic: tf.Tensor, scale: tf.Tensor
                           ) -> Tuple[tf.Tensor, tf.Tensor]:
  """Scales float [h, w, 3] (bilinear) and int [h, w] (nearest) by `scale`."""
  size = scaled_size(tf.shape(image)[:2], scale)
  image = tf.image.resize(image, size, method="bilinear")
  panoptic = tf.image.resize(panoptic[..., tf.newaxis], size, method="nearest")[..., 0]
  return image, panoptic


def long_side_scale(size: tf.Tensor, long_side: int) -> tf.Tensor:
  """The factor that makes the longer of `size` ([height, width]) equal `long_side`."""
  return float(long_side) / tf.cast(tf.reduce_max(size), tf.float32)


def scaled_size(size: tf.Tensor, scale: tf.Tensor) -> tf.Tensor:
  """round(size * scale) as int32 [2], at least 1 pixel each."""
  size = tf.cast(size, tf.float32) * scale
  return tf.maximum(tf.cast(tf.round(size), tf.int32), 1)


def resize_predictions_to_original(predictions: tf.Tensor, resized_size: tf.Tensor,
                                   original_size: tf.Tensor, output_size,
                                   pad_value=0) -> tf.Tensor:
  """Undoes the evaluation resize of `resize_long_side` on batched model-frame outputs.

  Each image's valid region `[:resized_h, :resized_w]` (the rest is padding) is resized
  to its original `[h, w]` -- nearest neighbour for integer maps (panoptic / semantic
  ids), bilinear for float maps (logits, probabilities) -- and placed top-left in an
  `output_size` canvas filled with `pad_value` (e.g. the padded ground-truth size).

  Args:
    predictions: [batch, H, W] or [batch, H, W, channels] at the model input resolution.
    resized_size: int32 [batch, 2], the resized image size inside the model input.
    original_size: int32 [batch, 2], each image's original (height, width).
    output_size: int32 [2] (height, width) >= every original size.
    pad_value: value outside each original image.

  Returns:
    [batch, output_h, output_w] or [batch, output_h, output_w, channels], the dtype of
    `predictions`.
  """
  has_channels = predictions.shape.rank == 4
  maps = predictions if has_channels else predictions[..., tf.newaxis]
  method = "bilinear" if maps.dtype.is_floating else "nearest"
  output_size = tf.cast(output_size, tf.int32)

  def undo(args):
    image_map, resized, original = args
    valid = image_map[:resized[0], :resized[1]]
    restored = tf.cast(tf.image.resize(valid, original, method=method), maps.dtype)
    slack = output_size - original
    paddings = [[0, slack[0]], [0, slack[1]], [0, 0]]
    return tf.pad(restored, paddings, constant_values=tf.cast(pad_value, maps.dtype))

  restored = tf.map_fn(undo, (maps, tf.cast(resized_size, tf.int32),
                              tf.cast(original_size, tf.int32)),
                       fn_output_signature=tf.TensorSpec([None, None, maps.shape[-1]],
                                                         maps.dtype))
  return restored if has_channels else restored[..., 0]


def predictions_to_label_frame(predictions: tf.Tensor, batch: Mapping[str, tf.Tensor],
                               pad_value=0) -> tf.Tensor:
  """Model-frame predictions of an evaluation batch at the size of its `panoptic` labels.

  Identity unless the pipeline resized the images (`resize_long_side`: the batch holds
  `resized_height`/`resized_width`); then `resize_predictions_to_original` with each
  image's original `height`/`width`, on a canvas the size of `batch["panoptic"]`.

  Args:
    predictions: [batch, H, W] ids or [batch, H, W, channels] floats at the model input.
    batch: an evaluation batch of `build_panoptic_dataset`.
    pad_value: value outside each original image (e.g. void).
  """
  if "resized_height" not in batch:
    return predictions
  return resize_predictions_to_original(
      predictions, tf.stack([batch["resized_height"], batch["resized_width"]], axis=-1),
      tf.stack([batch["height"], batch["width"]], axis=-1), tf.shape(batch["panoptic"])[1:3],
      pad_value=pad_value)


def random_pad_and_crop(image: tf.Tensor, panoptic: tf.Tensor, crop_size: Tuple[int, int],
                        seed: tf.Tensor, *, pad_value: float, ignore_value: tf.Tensor
                        ) -> Tuple[tf.Tensor, tf.Tensor]:
  """Pads (at a random offset) to at least `crop_size`, then crops at a random offset.

  The image is padded with `pad_value`, the label with `ignore_value`; image and label
  always move together. Output shapes are static: [ch, cw, 3] and [ch, cw].
  """
  crop_h, crop_w = crop_size
  seeds = tf.random.experimental.stateless_split(seed, 2)
  shape = tf.shape(panoptic)
  padded = tf.maximum(shape, [crop_h, crop_w])
  slack_pad = padded - shape
  pad_before = tf.random.stateless_uniform([2], seeds[0], 0, tf.int32.max, tf.int32) % (
      slack_pad + 1)
  paddings = tf.stack([pad_before, slack_pad - pad_before], axis=1)
  image = tf.pad(image, tf.concat([paddings, [[0, 0]]], 0), constant_values=pad_value)
  panoptic = tf.pad(panoptic, paddings, constant_values=ignore_value)
  slack_crop = padded - [crop_h, crop_w]
  offset = tf.random.stateless_uniform([2], seeds[1], 0, tf.int32.max, tf.int32) % (
      slack_crop + 1)
  image = tf.slice(image, tf.concat([offset, [0]], 0), [crop_h, crop_w, 3])
  panoptic = tf.slice(panoptic, offset, [crop_h, crop_w])
  return image, panoptic


def random_flip(image: tf.Tensor, panoptic: tf.Tensor, seed: tf.Tensor
                ) -> Tuple[tf.Tensor, tf.Tensor]:
  """Mirrors both left-right with probability 1/2."""
  do_flip = tf.random.stateless_uniform([], seed) < 0.5
  return tf.cond(do_flip, lambda: (image[:, ::-1], panoptic[:, ::-1]),
                 lambda: (image, panoptic))


def _list_files(file_pattern, shuffle: bool, seed):
  patterns = [file_pattern] if isinstance(file_pattern, str) else list(file_pattern)
  matched = [f for p in patterns for f in tf.io.gfile.glob(p)]
  if not matched:
    raise FileNotFoundError(datasets.missing_records_message(file_pattern))
  files = sorted(set(matched))
  dataset = tf.data.Dataset.from_tensor_slices(files)
  if shuffle:
    dataset = dataset.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
  return dataset, len(files)


def _read_records(file_pattern, *, is_training: bool, seed, input_context,
                  deterministic: bool) -> tf.data.Dataset:
  """Records, sharded for this input pipeline (files when enough, else records)."""
  files, num_files = _list_files(file_pattern, shuffle=is_training, seed=seed)
  num_pipelines = input_context.num_input_pipelines if input_context else 1
  pipeline_id = input_context.input_pipeline_id if input_context else 0
  shard_files = num_pipelines > 1 and num_files >= num_pipelines
  if shard_files:
    files = files.shard(num_pipelines, pipeline_id)
  records = files.interleave(tf.data.TFRecordDataset, cycle_length=min(num_files, 16),
                             block_length=1, num_parallel_calls=AUTOTUNE,
                             deterministic=deterministic)
  if num_pipelines > 1 and not shard_files:
    records = records.shard(num_pipelines, pipeline_id)
  return records


def _options(deterministic: bool, sharded_by_us: bool) -> tf.data.Options:
  options = tf.data.Options()
  options.deterministic = deterministic
  options.autotune.enabled = True
  if sharded_by_us:
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.OFF)
  return options


def _per_replica_batch_size(batch_size: int, input_context) -> int:
  if not isinstance(batch_size, int) or batch_size < 1:
    raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
  if input_context is None:
    return batch_size
  return input_context.get_per_replica_batch_size(batch_size)


def _with_seeds(dataset: tf.data.Dataset, seed, pipeline_id: int) -> tf.data.Dataset:
  """Zips each element with its own int64 [2] stateless seed."""
  base = None if seed is None else seed * 1000003 + pipeline_id
  return tf.data.Dataset.zip((dataset, tf.data.Dataset.random(seed=base).batch(2)))


def _check_divisor(example, dataset_info: datasets.DatasetInfo):
  """Fails clearly when records were written for another dataset/label divisor."""
  check = tf.debugging.assert_equal(
      example["label_divisor"], dataset_info.label_divisor,
      message=(f"TFRecord label_divisor differs from dataset_info "
               f"'{dataset_info.name}' label_divisor {dataset_info.label_divisor}"))
  with tf.control_dependencies([check]):
    return tf.identity(example["panoptic"])


def build_panoptic_dataset(file_pattern, dataset_info: datasets.DatasetInfo, *,
                           is_training: bool, batch_size: int,
                           crop_size: Optional[Sequence[int]] = None,
                           min_scale: float = 0.5, max_scale: float = 2.0,
                           scale_step: float = 0.1, flip: bool = True,
                           photometric: Optional[PhotometricOptions] = None,
                           shuffle_buffer: int = 256, seed: Optional[int] = None,
                           cache: bool = False, generate_targets: bool = True,
                           target_options: Optional[Mapping] = None,
                           pad_value: float = 127.5, input_context=None,
                           repeat: Optional[bool] = None,
                           resize_long_side: int = 0) -> tf.data.Dataset:
  """Panoptic training or evaluation dataset.

  Args:
    file_pattern: glob (or list of globs) of TFRecord shards.
    dataset_info: the dataset's constants (label divisor, ignore label, thing ids).
    is_training: random augmentation, shuffling, repeat, drop_remainder.
    batch_size: global batch size; divided by the number of replicas when `input_context`
      is given (for `strategy.distribute_datasets_from_function`).
    crop_size: (height, width). Required for training. For evaluation it pads every image
      to this size (it must hold the largest (resized) image); None pads each batch to
      its largest.
    min_scale, max_scale, scale_step: random scale augmentation (training).
    flip: random horizontal flip (training).
    photometric: colour jitter (training); None = off.
    shuffle_buffer: examples in the shuffle buffer (training).
    seed: makes training augmentation and order reproducible; None = random.
    cache: cache decoded examples in memory (small datasets).
    generate_targets: add Panoptic-DeepLab targets (`semantic`, `semantic_weights`,
      `center_heatmap`, `center_weights`, `center_offset`, `offset_weights`).
    target_options: keyword arguments of `generate_panoptic_targets` (sigma,
      small_instance_area, small_instance_weight); defaults to DEFAULT_TARGET_OPTIONS.
    pad_value: image padding value (127.5 is 0 after the models' x/127.5-1 normalization).
    input_context: tf.distribute.InputContext or None.
    repeat: repeat forever; defaults to `is_training`.
    resize_long_side: > 0 resizes every image so its longer side has this many pixels
      (labels nearest-neighbour). Training: folded into the random scale (one resize).
      Evaluation: only the image is resized; `panoptic` keeps the original size (padded
      to the batch's largest with void) and the batch gains `resized_height`,
      `resized_width` (int32 [b]), the image's extent in `image`; map predictions back
      with `predictions_to_label_frame` (targets, if generated, are at the original size
      too, like `panoptic`).

  Returns:
    Batches of dicts: image float32 [b, h, w, 3] in [0, 255], panoptic int32 [b, h, w] and
    the targets; evaluation batches also hold height, width (int32 [b], original size),
    image_id and image_name (string [b]) (and resized_height, resized_width).
  """
  if is_training:
    crop_size = _check_crop_size(crop_size)
    if not 0 < min_scale <= max_scale or scale_step < 0:
      raise ValueError(f"need 0 < min_scale <= max_scale and scale_step >= 0, got "
                       f"min_scale={min_scale}, max_scale={max_scale}, "
                       f"scale_step={scale_step}")
  elif crop_size is not None:
    crop_size = _check_crop_size(crop_size)
  if not isinstance(resize_long_side, int) or resize_long_side < 0:
    raise ValueError(f"resize_long_side must be an int >= 0, got {resize_long_side!r}")
  if (not is_training and resize_long_side and crop_size is not None and
      min(crop_size) < resize_long_side):
    raise ValueError(f"evaluation crop_size {crop_size} must be >= resize_long_side "
                     f"{resize_long_side} on both sides to hold the resized images")
  if dataset_info.task != "panoptic":
    raise ValueError(f"dataset_info '{dataset_info.name}' is a {dataset_info.task} dataset")
  per_replica_batch = _per_replica_batch_size(batch_size, input_context)
  target_options = dict(DEFAULT_TARGET_OPTIONS, **(target_options or {}))
  ignore_value = dataset_info.ignore_label * dataset_info.label_divisor
  deterministic = seed is not None or not is_training
  repeat = is_training if repeat is None else repeat

  records = _read_records(file_pattern, is_training=is_training, seed=seed,
                          input_context=input_context, deterministic=deterministic)

  def decode(serialized):
    example = decode_example(serialized)
    return {"image": example["image"], "panoptic": _check_divisor(example, dataset_info),
            "height": example["height"], "width": example["width"],
            "image_id": example["image_id"], "image_name": example["image_name"]}

  dataset = records.map(graph_map_fn(decode), num_parallel_calls=AUTOTUNE,
                        deterministic=deterministic)
  if cache:
    dataset = dataset.cache()
  if is_training:
    dataset = dataset.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
  if repeat:
    dataset = dataset.repeat()

  def add_targets(example):
    if generate_targets:
      # Imported lazily: ops may import data-independent modules that are heavy.
      from deeplab_axial.ops import panoptic_targets  # pylint: disable=import-outside-toplevel
      example.update(panoptic_targets.generate_panoptic_targets(
          example["panoptic"], label_divisor=dataset_info.label_divisor,
          ignore_label=dataset_info.ignore_label,
          thing_class_ids=tuple(dataset_info.thing_class_ids), **target_options))
    return example

  if is_training:
    def augment(example, seed_pair):
      seeds = tf.random.experimental.stateless_split(seed_pair, 4)
      image = tf.cast(example["image"], tf.float32)
      if photometric is not None:
        image = photometric.apply(image, seeds[0])
      panoptic = example["panoptic"]
      scale = random_scale_factor(seeds[1], min_scale, max_scale, scale_step)
      if resize_long_side:
        scale *= long_side_scale(tf.shape(panoptic), resize_long_side)
      image, panoptic = resize_image_and_label(image, panoptic, scale)
      image, panoptic = random_pad_and_crop(image, panoptic, crop_size, seeds[2],
                                            pad_value=pad_value, ignore_value=ignore_value)
      if flip:
        image, panoptic = random_flip(image, panoptic, seeds[3])
      return add_targets({"image": image, "panoptic": panoptic})

    pipeline_id = input_context.input_pipeline_id if input_context else 0
    dataset = _with_seeds(dataset, seed, pipeline_id).map(
        graph_map_fn(augment), num_parallel_calls=AUTOTUNE, deterministic=deterministic)
    dataset = dataset.batch(per_replica_batch, drop_remainder=True)
  else:
    def prepare_eval(example):
      image = tf.cast(example["image"], tf.float32)
      panoptic = example["panoptic"]
      if resize_long_side:
        size = scaled_size(tf.shape(panoptic),
                           long_side_scale(tf.shape(panoptic), resize_long_side))
        image = tf.image.resize(image, size, method="bilinear")
        example = dict(example, resized_height=size[0], resized_width=size[1])
      if crop_size is not None:
        image = _pad_to_crop(image, crop_size, pad_value)
        if not resize_long_side:
          panoptic = _pad_to_crop(panoptic, crop_size, ignore_value)
      example = dict(example, image=image, panoptic=panoptic)
      return add_targets(example)

    dataset = dataset.map(graph_map_fn(prepare_eval), num_parallel_calls=AUTOTUNE,
                          deterministic=True)
    if crop_size is not None and not resize_long_side:
      dataset = dataset.batch(per_replica_batch, drop_remainder=False)
    else:
      dataset = _padded_batch(dataset, per_replica_batch, pad_value, ignore_value,
                              dataset_info.ignore_label)
  return dataset.prefetch(AUTOTUNE).with_options(
      _options(deterministic, sharded_by_us=input_context is not None))


def _pad_to_crop(tensor: tf.Tensor, crop_size: Tuple[int, int], value) -> tf.Tensor:
  """Pads [h, w] or [h, w, c] at the bottom/right to crop_size (asserting it fits)."""
  shape = tf.shape(tensor)[:2]
  check = tf.debugging.assert_less_equal(
      shape, tf.constant(crop_size, tf.int32),
      message=f"an evaluation image is larger than crop_size {crop_size}; increase "
              f"eval.crop_size to hold the largest image (or set dataset.resize_long_side)")
  with tf.control_dependencies([check]):
    paddings = tf.stack([[0, 0], tf.constant(crop_size) - shape], axis=1)
  paddings = tf.concat([paddings, tf.zeros([tensor.shape.rank - 2, 2], tf.int32)], 0)
  padded = tf.pad(tensor, paddings, constant_values=value)
  return tf.ensure_shape(padded, list(crop_size) + tensor.shape[2:].as_list())


def panoptic_options_from_config(dataset_options, *, is_training: bool,
                                 generate_targets: bool = True) -> Dict:
  """The `build_panoptic_dataset` keyword arguments a `DatasetOptions` proto sets.

  Training: crop, scale, flip, photometric (None unless `augmentation.photometric`),
  shuffle buffer, `resize_long_side` and, with `generate_targets`, the target options
  (only then are `dataset.targets` read, so a config setting them for a model without
  Panoptic-DeepLab targets is caught as unread); evaluation: `resize_long_side` (the
  eval crop comes from `eval.crop_size` or the dataset descriptor).
  """
  options = {"resize_long_side": int(dataset_options.resize_long_side)}
  if not is_training:
    return options
  augmentation, targets = dataset_options.augmentation, dataset_options.targets
  options.update(
      crop_size=tuple(dataset_options.crop_size),
      min_scale=augmentation.min_scale_factor, max_scale=augmentation.max_scale_factor,
      scale_step=augmentation.scale_factor_step, flip=augmentation.horizontal_flip,
      photometric=(PhotometricOptions.from_config(augmentation)
                   if augmentation.photometric else None),
      shuffle_buffer=dataset_options.shuffle_buffer_size)
  if generate_targets:
    options["target_options"] = {
        "sigma": targets.sigma, "small_instance_area": targets.small_instance_area,
        "small_instance_weight": targets.small_instance_weight,
        "ignore_crowd_in_semantic": targets.ignore_crowd_in_semantic}
  return options


def _padded_batch(dataset, batch_size, pad_value, ignore_value, ignore_label):
  """Pads each batch to its largest image: image with pad_value, labels with ignore."""
  special = {"image": pad_value, "panoptic": ignore_value, "semantic": ignore_label}
  padding_values = {
      name: tf.constant(special.get(name, "" if spec.dtype == tf.string else 0), spec.dtype)
      for name, spec in dataset.element_spec.items()}
  return dataset.padded_batch(batch_size, padding_values=padding_values,
                              drop_remainder=False)


def resize_and_center_crop(image, image_size: int, resize_size: int):
  """The classification evaluation preprocessing of one image (also in the SavedModel).

  Resizes (bilinear) so that the shorter side is `resize_size`, then takes the central
  `image_size x image_size` crop.

  Args:
    image: `[height, width, 3]` pixels in [0, 255] (any real or integer dtype).
    image_size: side of the square crop.
    resize_size: shorter side after resizing (>= image_size).

  Returns:
    float32 `[image_size, image_size, 3]`.
  """
  image = tf.cast(image, tf.float32)
  shape = tf.cast(tf.shape(image)[:2], tf.float32)
  scale = resize_size / tf.reduce_min(shape)
  size = tf.maximum(tf.cast(tf.round(shape * scale), tf.int32), resize_size)
  image = tf.image.resize(image, size, method="bilinear")
  offset = (size - image_size) // 2
  return tf.slice(image, tf.concat([offset, [0]], 0), [image_size, image_size, 3])


def build_classification_dataset(file_pattern, *, is_training: bool, batch_size: int,
                                 image_size: int = 224, resize_size: int = 256,
                                 area_range: Tuple[float, float] = (0.08, 1.0),
                                 aspect_ratio_range: Tuple[float, float] = (3 / 4, 4 / 3),
                                 flip: bool = True, num_classes: Optional[int] = None,
                                 label_smoothing: float = 0.0, shuffle_buffer: int = 10000,
                                 seed: Optional[int] = None, cache: bool = False,
                                 input_context=None,
                                 repeat: Optional[bool] = None) -> tf.data.Dataset:
  """Image classification dataset (ImageNet-style).

  Training: Inception-style random crop (area fraction `area_range`, aspect ratio
  `aspect_ratio_range`) resized to `image_size`², random horizontal flip. Evaluation:
  resize the shorter side to `resize_size`, centre crop `image_size`².

  Args:
    num_classes: when given, also returns `label_one_hot` float32 [b, num_classes] with
      `label_smoothing` applied: (1 - ε)·one_hot + ε / num_classes.
    Others as in `build_panoptic_dataset`.

  Returns:
    Batches of dicts: image float32 [b, image_size, image_size, 3] in [0, 255], label int32
    [b] (and label_one_hot).
  """
  if not isinstance(image_size, int) or image_size < 1 or resize_size < image_size:
    raise ValueError(f"need image_size >= 1 and resize_size >= image_size, got "
                     f"image_size={image_size!r}, resize_size={resize_size!r}")
  if not 0.0 <= label_smoothing < 1.0:
    raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
  if label_smoothing and num_classes is None:
    raise ValueError("label_smoothing needs num_classes")
  per_replica_batch = _per_replica_batch_size(batch_size, input_context)
  deterministic = seed is not None or not is_training
  repeat = is_training if repeat is None else repeat
  records = _read_records(file_pattern, is_training=is_training, seed=seed,
                          input_context=input_context, deterministic=deterministic)

  def decode(serialized):
    example = decode_example(serialized, decode_panoptic=False)
    label = example["label"]
    check = tf.debugging.assert_non_negative(
        label, message="a classification record has no image/class/label")
    with tf.control_dependencies([check]):
      label = tf.identity(label)
    return {"image": example["image"], "label": label}

  dataset = records.map(graph_map_fn(decode), num_parallel_calls=AUTOTUNE,
                        deterministic=deterministic)
  if cache:
    dataset = dataset.cache()
  if is_training:
    dataset = dataset.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
  if repeat:
    dataset = dataset.repeat()

  def finish(image, label):
    example = {"image": tf.ensure_shape(image, [image_size, image_size, 3]), "label": label}
    if num_classes is not None:
      one_hot = tf.one_hot(label, num_classes, dtype=tf.float32)
      example["label_one_hot"] = one_hot * (1.0 - label_smoothing) + (
          label_smoothing / num_classes)
    return example

  if is_training:
    def augment(example, seed_pair):
      seeds = tf.random.experimental.stateless_split(seed_pair, 2)
      image = example["image"]
      begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
          tf.shape(image), bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
          seed=seeds[0], min_object_covered=area_range[0],
          aspect_ratio_range=aspect_ratio_range, area_range=area_range, max_attempts=10,
          use_image_if_no_bounding_boxes=True)
      image = tf.slice(image, begin, size)
      image = tf.image.resize(tf.cast(image, tf.float32), [image_size, image_size],
                              method="bilinear")
      if flip:
        image = tf.cond(tf.random.stateless_uniform([], seeds[1]) < 0.5,
                        lambda: image[:, ::-1], lambda: image)
      return finish(image, example["label"])

    pipeline_id = input_context.input_pipeline_id if input_context else 0
    dataset = _with_seeds(dataset, seed, pipeline_id).map(
        graph_map_fn(augment), num_parallel_calls=AUTOTUNE, deterministic=deterministic)
  else:
    def center_crop(example):
      return finish(resize_and_center_crop(example["image"], image_size, resize_size),
                    example["label"])

    dataset = dataset.map(graph_map_fn(center_crop), num_parallel_calls=AUTOTUNE,
                          deterministic=True)
  dataset = dataset.batch(per_replica_batch, drop_remainder=is_training)
  return dataset.prefetch(AUTOTUNE).with_options(
      _options(deterministic, sharded_by_us=input_context is not None))


__all__ = ["DEFAULT_TARGET_OPTIONS", "PhotometricOptions", "build_classification_dataset",
           "build_panoptic_dataset", "decode_example", "decode_panoptic_png",
           "long_side_scale", "panoptic_options_from_config", "predictions_to_label_frame",
           "random_flip",
           "random_pad_and_crop", "random_scale_factor", "resize_and_center_crop",
           "resize_image_and_label", "resize_predictions_to_original", "scaled_size"]
