"""tf.data pipelines: shapes, augmentation geometry, determinism, sharding, classification."""
import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from deeplab_axial.data import datasets
from deeplab_axial.data import pipeline
from deeplab_axial.data.converters import common

# A 3-class toy dataset: class 0 stuff, classes 1 and 2 things, divisor 256.
INFO = datasets.DatasetInfo(name="toy", num_classes=3, ignore_label=255, label_divisor=256,
                            thing_class_ids=(1, 2), class_names=("bg", "a", "b"),
                            colormap=np.zeros((3, 3), np.uint8))
IGNORE = 255 * 256


def label_map(height, width, seed):
  """A panoptic map with stuff, two instances, a crowd patch and void."""
  rng = np.random.default_rng(seed)
  panoptic = np.zeros((height, width), np.int32)
  panoptic[1:5, 2:7] = 1 * 256 + 1
  panoptic[4:9, 6:10] = 2 * 256 + 1
  panoptic[rng.integers(0, height), :] = IGNORE
  panoptic[-2:, :2] = 1 * 256
  return panoptic


def encode_label_in_image(panoptic):
  """R = semantic, G = instance, B = 9: lets a test check image/label alignment."""
  return np.stack([panoptic // 256, panoptic % 256, np.full_like(panoptic, 9)],
                  -1).astype(np.uint8)


def write_records(directory, maps, num_shards=1, images=None):
  examples = []
  for index, panoptic in enumerate(maps):
    pixels = encode_label_in_image(panoptic) if images is None else images[index]
    import io  # pylint: disable=import-outside-toplevel
    from PIL import Image  # pylint: disable=import-outside-toplevel
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    image = common.ImageData(buffer.getvalue(), "png", *panoptic.shape)
    examples.append(common.panoptic_example(image, panoptic, image_id=str(index),
                                            filename=f"{index}.png", dataset_info=INFO))
  common.write_sharded_tfrecords(examples, lambda e: e, output_dir=str(directory),
                                 split="train", num_shards=num_shards, show_progress=False)
  return common.file_pattern(str(directory), "train")


@pytest.fixture(scope="module")
def records(tmp_path_factory):
  directory = tmp_path_factory.mktemp("records")
  maps = [label_map(10, 12, seed) for seed in range(6)]
  return write_records(directory, maps, num_shards=2), maps


def test_decode_example_returns_documented_fields(records):
  pattern, maps = records
  record = next(iter(tf.data.TFRecordDataset(tf.io.gfile.glob(pattern)[:1])))
  example = pipeline.decode_example(record)
  assert example["image"].dtype == tf.uint8 and example["image"].shape == (10, 12, 3)
  assert example["panoptic"].dtype == tf.int32
  np.testing.assert_array_equal(example["panoptic"].numpy(), maps[0])
  assert int(example["label_divisor"]) == 256 and int(example["ignore_label"]) == 255
  assert int(example["height"]) == 10 and int(example["width"]) == 12
  assert example["image_id"].numpy() == b"0" and int(example["label"]) == -1


def _train(pattern, **kwargs):
  options = dict(is_training=True, crop_size=(8, 9), batch_size=2, seed=5,
                 generate_targets=False)
  options.update(kwargs)
  return pipeline.build_panoptic_dataset(pattern, INFO, **options)


def test_train_batches_have_static_shapes_and_dtypes(records):
  dataset = _train(records[0])
  spec = dataset.element_spec
  assert spec["image"].shape == (2, 8, 9, 3) and spec["image"].dtype == tf.float32
  assert spec["panoptic"].shape == (2, 8, 9) and spec["panoptic"].dtype == tf.int32
  batch = next(iter(dataset))
  assert 0.0 <= float(tf.reduce_min(batch["image"])) <= float(tf.reduce_max(batch["image"])) \
      <= 255.0


def test_crop_pad_flip_keep_image_and_label_aligned(records):
  # Without rescaling, every non-padded pixel's colour still encodes its own label.
  dataset = _train(records[0], min_scale=1.0, max_scale=1.0, crop_size=(13, 11),
                   batch_size=3)
  for batch in dataset.take(4):
    image = batch["image"].numpy()
    panoptic = batch["panoptic"].numpy()
    padded = image[..., 2] == 127.5  # real pixels have blue = 9
    assert padded.any() and not padded.all()
    assert np.all(image[padded] == 127.5) and np.all(panoptic[padded] == IGNORE)
    decoded = image[..., 0] * 256 + image[..., 1]
    np.testing.assert_array_equal(decoded[~padded], panoptic[~padded])


def test_scale_two_resizes_label_nearest_and_image_bilinear(records):
  pattern, maps = records
  dataset = pipeline.build_panoptic_dataset(
      pattern, INFO, is_training=True, crop_size=(20, 24), batch_size=1, min_scale=2.0,
      max_scale=2.0, seed=0, shuffle_buffer=1, generate_targets=False)
  for batch in dataset.take(6):
    got = batch["panoptic"].numpy()[0]
    image = batch["image"].numpy()[0]
    matches = []
    for m in maps:
      upsampled = np.repeat(np.repeat(m, 2, 0), 2, 1)
      resized = tf.image.resize(encode_label_in_image(m).astype(np.float32), (20, 24)).numpy()
      for flip in (False, True):
        label, pixels = (upsampled[:, ::-1], resized[:, ::-1]) if flip else (upsampled,
                                                                           resized)
        if np.array_equal(got, label):
          matches.append(np.allclose(image, pixels, atol=1e-3))
    assert matches and all(matches)


def test_flip_twice_is_identity_and_flip_mirrors():
  image = tf.random.uniform([5, 7, 3])
  panoptic = tf.random.uniform([5, 7], 0, 100, tf.int32)
  flipped_once = False
  for seed in range(8):
    seed = tf.constant([seed, 1])
    once = pipeline.random_flip(image, panoptic, seed)
    twice = pipeline.random_flip(*once, seed)
    np.testing.assert_array_equal(twice[0].numpy(), image.numpy())
    np.testing.assert_array_equal(twice[1].numpy(), panoptic.numpy())
    if not np.array_equal(once[1].numpy(), panoptic.numpy()):
      flipped_once = True
      np.testing.assert_array_equal(once[1].numpy(), panoptic.numpy()[:, ::-1])
      np.testing.assert_array_equal(once[0].numpy(), image.numpy()[:, ::-1])
  assert flipped_once


def test_training_stream_is_reproducible_with_a_seed(records):
  first = [b["panoptic"].numpy() for b in _train(records[0], seed=11).take(3)]
  second = [b["panoptic"].numpy() for b in _train(records[0], seed=11).take(3)]
  for a, b in zip(first, second):
    np.testing.assert_array_equal(a, b)


def test_eval_pads_to_crop_size_and_is_deterministic(records):
  pattern, maps = records
  dataset = pipeline.build_panoptic_dataset(pattern, INFO, is_training=False,
                                            crop_size=(11, 13), batch_size=4,
                                            generate_targets=False)
  runs = [list(dataset), list(dataset)]
  ids = [i.decode() for b in runs[0] for i in b["image_id"].numpy()]
  assert sorted(ids) == [str(i) for i in range(6)] and len(runs[0]) == 2
  for a, b in zip(*runs):
    np.testing.assert_array_equal(a["image"].numpy(), b["image"].numpy())
  batch = runs[0][0]
  for row, image_id in enumerate(batch["image_id"].numpy()):
    expected = maps[int(image_id)]
    np.testing.assert_array_equal(batch["panoptic"][row, :10, :12].numpy(), expected)
    assert np.all(batch["panoptic"][row, 10:].numpy() == IGNORE)
    assert np.all(batch["image"][row, :, 12:].numpy() == 127.5)
    assert int(batch["height"][row]) == 10 and int(batch["width"][row]) == 12


def test_eval_without_crop_pads_each_batch(records):
  dataset = pipeline.build_panoptic_dataset(records[0], INFO, is_training=False,
                                            batch_size=3, generate_targets=False)
  batch = next(iter(dataset))
  assert batch["image"].shape == (3, 10, 12, 3)


def test_eval_image_larger_than_crop_fails_clearly(records):
  dataset = pipeline.build_panoptic_dataset(records[0], INFO, is_training=False,
                                            crop_size=(5, 5), batch_size=1,
                                            generate_targets=False)
  with pytest.raises(tf.errors.InvalidArgumentError, match="larger than crop_size"):
    next(iter(dataset))


def test_wrong_dataset_info_is_detected(records):
  other = dataclasses.replace(INFO, label_divisor=1000)
  dataset = pipeline.build_panoptic_dataset(records[0], other, is_training=False,
                                            batch_size=1, generate_targets=False)
  with pytest.raises(tf.errors.InvalidArgumentError, match="label_divisor"):
    next(iter(dataset))


def test_argument_errors(records, tmp_path):
  with pytest.raises(FileNotFoundError, match="matches no files"):
    pipeline.build_panoptic_dataset(str(tmp_path / "nothing-*"), INFO, is_training=False,
                                    batch_size=1)
  with pytest.raises(ValueError, match="crop_size"):
    pipeline.build_panoptic_dataset(records[0], INFO, is_training=True, batch_size=1)
  with pytest.raises(ValueError, match="min_scale"):
    _train(records[0], min_scale=2.0, max_scale=1.0)


def test_input_context_shards_and_splits_the_batch(records):
  seen = []
  for pipeline_id in range(2):
    context = tf.distribute.InputContext(num_input_pipelines=2,
                                         input_pipeline_id=pipeline_id,
                                         num_replicas_in_sync=2)
    dataset = pipeline.build_panoptic_dataset(records[0], INFO, is_training=False,
                                              crop_size=(10, 12), batch_size=4,
                                              generate_targets=False, input_context=context)
    for batch in dataset:
      assert batch["image"].shape[0] <= 2
      seen.extend(i.decode() for i in batch["image_id"].numpy())
  assert sorted(seen) == [str(i) for i in range(6)]


def test_distribute_datasets_from_function(records, two_cpu_strategy):
  dataset = two_cpu_strategy.distribute_datasets_from_function(
      lambda context: _train(records[0], batch_size=4, input_context=context))
  batch = next(iter(dataset))
  shapes = [t.shape for t in two_cpu_strategy.experimental_local_results(batch["image"])]
  assert shapes == [(2, 8, 9, 3), (2, 8, 9, 3)]


def test_targets_are_generated_after_augmentation(records):
  pytest.importorskip("deeplab_axial.ops.panoptic_targets")
  dataset = _train(records[0], generate_targets=True, crop_size=(12, 12))
  batch = next(iter(dataset))
  assert batch["center_heatmap"].shape == (2, 12, 12, 1)
  assert batch["center_offset"].shape == (2, 12, 12, 2)
  panoptic = batch["panoptic"].numpy()
  semantic = batch["semantic"].numpy()
  valid = panoptic != IGNORE
  np.testing.assert_array_equal(semantic[valid], panoptic[valid] // 256)
  # pixel + offset lands on a pixel of the same instance (the instance centre).
  offsets = batch["center_offset"].numpy()
  weights = batch["offset_weights"].numpy()
  for b, y, x in zip(*np.nonzero(weights)):
    cy, cx = int(y + offsets[b, y, x, 0]), int(x + offsets[b, y, x, 1])
    assert 0 <= cy < 12 and 0 <= cx < 12


# --- classification ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def classification_records(tmp_path_factory):
  directory = tmp_path_factory.mktemp("cls")
  info = datasets.DatasetInfo(name="cls", num_classes=4, ignore_label=255, label_divisor=0,
                              thing_class_ids=(), class_names=tuple("abcd"),
                              colormap=np.zeros((4, 3)), task="classification")
  rng = np.random.default_rng(0)
  images = [rng.integers(0, 256, (18, 24, 3), dtype=np.uint8) for _ in range(4)]
  import io  # pylint: disable=import-outside-toplevel
  from PIL import Image  # pylint: disable=import-outside-toplevel
  examples = []
  for label, pixels in enumerate(images):
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    examples.append(common.classification_example(
        common.ImageData(buffer.getvalue(), "png", 18, 24), label, class_name="abcd"[label],
        image_id=str(label), filename=f"{label}.png", dataset_info=info))
  common.write_sharded_tfrecords(examples, lambda e: e, output_dir=str(directory),
                                 split="val", num_shards=1, show_progress=False)
  return common.file_pattern(str(directory), "val"), images


def test_classification_eval_is_resize_then_center_crop(classification_records):
  pattern, images = classification_records
  dataset = pipeline.build_classification_dataset(pattern, is_training=False, batch_size=4,
                                                  image_size=16, resize_size=18,
                                                  num_classes=4, label_smoothing=0.2)
  batch = next(iter(dataset))
  np.testing.assert_array_equal(batch["label"].numpy(), [0, 1, 2, 3])
  # The shorter side is already 18: resizing is the identity, the crop starts at (1, 4).
  for label, pixels in enumerate(images):
    np.testing.assert_allclose(batch["image"][label].numpy(), pixels[1:17, 4:20], atol=1e-3)
  np.testing.assert_allclose(batch["label_one_hot"][1].numpy(), [0.05, 0.85, 0.05, 0.05],
                             atol=1e-6)


def test_classification_training_crops_to_size(classification_records):
  dataset = pipeline.build_classification_dataset(classification_records[0],
                                                  is_training=True, batch_size=2,
                                                  image_size=16, seed=1)
  batch = next(iter(dataset))
  assert batch["image"].shape == (2, 16, 16, 3) and batch["label"].dtype == tf.int32
  assert set(batch["label"].numpy()) <= {0, 1, 2, 3}
