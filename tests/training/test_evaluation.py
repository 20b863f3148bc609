"""Test-time augmentation against NumPy, and the eval loop with the panoptic evaluator
(single / distributed, padded last batch, strings kept on the host)."""
import numpy as np
from PIL import Image
import pytest
import tensorflow as tf
import tf_keras

from deeplab_axial.data import encoding
from deeplab_axial.data import prediction_writers
from deeplab_axial.metrics import InstanceAP, MeanIoU, PanopticQuality
from deeplab_axial.tasks import panoptic
from deeplab_axial.tasks import post_processing
from deeplab_axial.tasks import tta
from deeplab_axial.training import evaluation
from deeplab_axial.training import loop

NUM_CLASSES, IGNORE, DIVISOR, THINGS = 4, 255, 1000, (2, 3)


def _softmax(x):
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def pixelwise_model(images):
  """Outputs that depend on each pixel's colour, except dx = the pixel's column."""
  width = tf.shape(images)[2]
  column = tf.cast(tf.range(width), tf.float32)[tf.newaxis, tf.newaxis, :]
  return {"semantic_logits": images / 50.0,
          "center_heatmap": images[..., :1] / 255.0,
          "center_offset": tf.stack([images[..., 1] / 10.0,
                                     tf.zeros_like(images[..., 0]) + column], axis=-1)}


def test_flip_matches_numpy():
  images = np.random.default_rng(0).uniform(0, 255, (2, 5, 7, 3)).astype(np.float32)
  result = tta.predict_with_tta(pixelwise_model, images, flip=True)
  np.testing.assert_allclose(result["semantic_probs"], _softmax(images / 50.0), atol=1e-6)
  np.testing.assert_allclose(result["center_heatmap"], images[..., :1] / 255.0, atol=1e-6)
  np.testing.assert_allclose(result["center_offset"][..., 0], images[..., 1] / 10.0,
                             atol=1e-5)
  # Unflipped dx = x; the mirrored copy gives -(W - 1 - x) once flipped back and negated.
  expected_dx = np.broadcast_to(np.arange(7) - 3.0, (2, 5, 7))
  np.testing.assert_allclose(result["center_offset"][..., 1], expected_dx, atol=1e-6)


def size_model(images):
  """Constant outputs that reveal the size the model saw: logits (h/4, w/4, 0), offset (1, 2)."""
  shape = tf.shape(images)
  size = tf.cast(shape[1:3], tf.float32)
  logits = tf.concat([size / 4.0, [0.0]], axis=0)
  ones = tf.ones(tf.concat([shape[:3], [1]], axis=0))
  return {"semantic_logits": ones * logits, "center_heatmap": ones * 0.5,
          "center_offset": ones * tf.constant([1.0, 2.0])}


@pytest.mark.parametrize("flip", [False, True])
def test_multi_scale_matches_numpy(flip):
  images = np.full((2, 8, 12, 3), 100.0, np.float32)
  scales = (1.0, 0.5, 0.75)
  sizes = [(8, 12), (4, 6), (6, 9)]
  result = tta.predict_with_tta(size_model, images, scales=scales, flip=flip)
  probs = np.mean([_softmax(np.array([h / 4, w / 4, 0.0])) for h, w in sizes], axis=0)
  dy = np.mean([8 / h for h, _ in sizes])
  dx = 0.0 if flip else np.mean([2 * 12 / w for _, w in sizes])
  np.testing.assert_allclose(result["semantic_probs"], np.broadcast_to(probs, (2, 8, 12, 3)),
                             atol=1e-6)
  np.testing.assert_allclose(result["center_heatmap"], 0.5, atol=1e-6)
  np.testing.assert_allclose(result["center_offset"][..., 0], dy, atol=1e-5)
  np.testing.assert_allclose(result["center_offset"][..., 1], dx, atol=1e-5)


def test_tta_in_tf_function_with_unknown_size():
  images = np.random.default_rng(1).uniform(0, 255, (1, 6, 10, 3)).astype(np.float32)
  predict = tf.function(
      lambda x: tta.predict_with_tta(pixelwise_model, x, scales=(1.0, 1.5), flip=True),
      input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)])
  eager = tta.predict_with_tta(pixelwise_model, images, scales=(1.0, 1.5), flip=True)
  graph = predict(images)
  for key, value in eager.items():
    np.testing.assert_allclose(graph[key], value, atol=1e-5)


def test_tta_bad_arguments():
  with pytest.raises(ValueError, match="scales"):
    tta.predict_with_tta(pixelwise_model, np.zeros((1, 4, 4, 3)), scales=(0.0,))
  with pytest.raises(ValueError, match="images must have shape"):
    tta.predict_with_tta(pixelwise_model, np.zeros((4, 4, 3)))
  with pytest.raises(ValueError, match="center_offset"):
    tta.predict_with_tta(lambda x: {"semantic_logits": x, "center_heatmap": x},
                                np.zeros((1, 4, 4, 3)))


# ----------------------------------------------------------------------------------------
# Evaluator: the images encode the prediction, which a fake model and post-processor decode.


def _example_batch(rng, count=4, height=16, width=24):
  gt = np.zeros((count, height, width), np.int32)
  pred = np.zeros((count, height, width), np.int32)
  for i in range(count):
    gt[i, :, width // 2:] = 1 * DIVISOR
    for instance in range(1, 4):
      category = THINGS[instance % 2]
      y, x = rng.integers(0, height - 5), rng.integers(0, width - 6)
      gt[i, y:y + 5, x:x + 6] = category * DIVISOR + instance
    pred[i] = gt[i]
    y, x = rng.integers(0, height - 4, size=2)
    pred[i, y:y + 4, x:x + 5] = THINGS[0] * DIVISOR + 5
    pred[i, :3, :] = 0
    gt[i, -2:, :] = IGNORE * DIVISOR
  semantic, instance = pred // DIVISOR, pred % DIVISOR
  images = np.stack([semantic * 20, instance * 10, np.zeros_like(pred)], -1).astype(np.uint8)
  return gt, pred, images


def decoding_model(images):
  semantic = tf.cast(tf.round(images[..., 0] / 20.0), tf.int32)
  return {"semantic_logits": 10.0 * tf.one_hot(semantic, NUM_CLASSES),
          "center_heatmap": images[..., 1:2] / 10.0,
          "center_offset": tf.zeros_like(images[..., :2])}


def fake_post_process(semantic_probs, center_heatmap, center_offset):
  del center_offset
  semantic = tf.argmax(semantic_probs, axis=-1, output_type=tf.int32)
  instance = tf.cast(tf.round(center_heatmap[..., 0]), tf.int32)
  is_thing = tf.reduce_any(tf.equal(semantic[..., tf.newaxis], THINGS), axis=-1)
  panoptic = semantic * DIVISOR + tf.where(is_thing, instance, 0)
  candidates = tf.constant([[c * DIVISOR + i for c in THINGS for i in range(1, 6)]])
  candidates = tf.tile(candidates, [tf.shape(semantic)[0], 1])
  scores = tf.cast(candidates % 7, tf.float32) / 7.0
  return {"panoptic": panoptic, "semantic": semantic, "instance_panoptic_ids": candidates,
          "instance_scores": scores}


class _FakePostProcessing(post_processing.PostProcessingOptions):
  """The dataset's label space with `fake_post_process` instead of panoptic_inference."""

  def __call__(self, semantic_probs, center_heatmap, center_offset):
    return fake_post_process(semantic_probs, center_heatmap, center_offset)


FAKE_POST_PROCESSING = _FakePostProcessing(THINGS, DIVISOR, IGNORE)


def _evaluate(dataset, strategy=None, post_processing_options=FAKE_POST_PROCESSING,
              writer=None, batch_size=4, **evaluator_options):
  strategy = strategy or tf.distribute.get_strategy()
  with strategy.scope():
    evaluator = panoptic.PanopticEvaluator(decoding_model, post_processing_options,
                                           num_classes=NUM_CLASSES, **evaluator_options)
  loop = evaluation.EvalLoop(strategy, evaluator,
                             evaluation.global_eval_batch_size(batch_size, strategy))
  return loop.evaluate(dataset, prediction_writer=writer)


def _direct_metrics(gt, pred):
  """The reference: the (separately verified) metrics applied to the designed prediction."""
  pq = PanopticQuality(NUM_CLASSES, IGNORE, DIVISOR, THINGS)
  pq.update_state(gt, pred)
  miou = MeanIoU(NUM_CLASSES, IGNORE)
  miou.update_state(gt // DIVISOR, pred // DIVISOR)
  ap = InstanceAP(NUM_CLASSES, IGNORE, DIVISOR, THINGS)
  ids = np.tile([[c * DIVISOR + i for c in THINGS for i in range(1, 6)]], (len(gt), 1))
  ap.update_state(gt, pred, ids, (ids % 7) / 7.0)
  expected = {k: float(v) for k, v in pq.result().items() if np.ndim(v) == 0}
  expected["miou"] = float(miou.result()["miou"])
  expected.update(ap.result())
  return expected


def _dataset(gt, images):
  ids = [f"img_{i}" for i in range(len(gt))]
  return tf.data.Dataset.from_tensor_slices(
      {"image": images, "panoptic": gt, "image_id": ids}).batch(4)


@pytest.mark.parametrize("use_strategy,count", [(False, 8), (True, 8), (True, 7)])
def test_evaluator_matches_direct_metrics(use_strategy, count, request, tmp_path):
  """With 2 replicas and 7 images in batches of 4, the last batch (3 images) is padded
  with invalid images: nothing is dropped or counted twice, AP included (gathered from
  both replicas)."""
  strategy = request.getfixturevalue("two_cpu_strategy") if use_strategy else None
  gt, pred, images = _example_batch(np.random.default_rng(2), count=count)
  writer = prediction_writers.CityscapesPanopticWriter(
      str(tmp_path), DIVISOR, IGNORE, THINGS, category_map={c: c + 7 for c in range(4)})
  results = _evaluate(_dataset(gt, images), strategy, writer=writer, flip=True,
                      compute_ap=True)
  expected = _direct_metrics(gt, pred)
  for key in ("pq", "sq", "rq", "pq_th", "sq_th", "rq_th", "pq_st", "sq_st", "rq_st", "miou",
              "ap", "ap50", "ap75"):
    assert results[key] == pytest.approx(expected[key], abs=1e-12), key
  assert 0 < results["pq"] < 1 and 0 < results["miou"] < 1 and 0 < results["ap"] < 1
  assert results["per_class_pq"].shape == (NUM_CLASSES,)
  # Written predictions: one PNG per image, named by image_id, holding the predicted segments.
  written = {a["image_id"]: a for a in writer.annotations}
  assert sorted(written) == sorted(f"img_{i}" for i in range(count))
  ids = encoding.rgb_to_id(
      np.asarray(Image.open(f"{writer.png_dir}/img_5_panoptic.png")))
  expected_ids = np.where(pred[5] % DIVISOR > 0, (pred[5] // DIVISOR + 7) * 1000 + pred[5] %
                          DIVISOR, pred[5] // DIVISOR + 7)
  np.testing.assert_array_equal(ids, expected_ids)

def test_a_second_evaluation_starts_from_fresh_metric_state():
  gt, pred, images = _example_batch(np.random.default_rng(2), count=8)
  with tf.distribute.get_strategy().scope():
    evaluator = panoptic.PanopticEvaluator(decoding_model, FAKE_POST_PROCESSING,
                                           num_classes=NUM_CLASSES)
  loop = evaluation.EvalLoop(tf.distribute.get_strategy(), evaluator, 4)
  loop.evaluate(_dataset(gt, images))
  assert loop.evaluate(_dataset(gt, images))["pq"] == pytest.approx(
      _direct_metrics(gt, pred)["pq"], abs=1e-12)


def test_evaluator_scores_padded_images_as_their_unpadded_originals(tmp_path):
  """Batches padded to one size carry each image's height/width; the metrics and the
  written predictions must be those of the unpadded images."""
  gt, pred, images = _example_batch(np.random.default_rng(4), count=4)
  heights, widths = np.array([16, 12, 10, 16]), np.array([24, 20, 24, 13])
  for i, (height, width) in enumerate(zip(heights, widths)):
    gt[i, height:], gt[i, :, width:] = IGNORE * DIVISOR, IGNORE * DIVISOR
    # An unmatched thing mostly in the padding: judged by its whole area it would be
    # "more than half void" and ignored; inside the image it is a false positive.
    pred[i, max(height - 2, 0):height + 4, :8] = THINGS[1] * DIVISOR + 9
  semantic, instance = pred // DIVISOR, pred % DIVISOR
  images = np.stack([semantic * 20, instance * 10, np.zeros_like(pred)], -1).astype(np.uint8)
  dataset = tf.data.Dataset.from_tensor_slices(
      {"image": images, "panoptic": gt, "height": heights, "width": widths,
       "image_id": [f"img_{i}" for i in range(4)]}).batch(4)
  writer = prediction_writers.CityscapesPanopticWriter(
      str(tmp_path), DIVISOR, IGNORE, THINGS, category_map={c: c + 7 for c in range(4)})
  results = _evaluate(dataset, writer=writer)
  pq = PanopticQuality(NUM_CLASSES, IGNORE, DIVISOR, THINGS)
  miou = MeanIoU(NUM_CLASSES, IGNORE)
  for i, (height, width) in enumerate(zip(heights, widths)):
    pq.update_state(gt[i:i + 1, :height, :width], pred[i:i + 1, :height, :width])
    miou.update_state(gt[i:i + 1, :height, :width] // DIVISOR,
                      pred[i:i + 1, :height, :width] // DIVISOR)
  expected = pq.result()
  for key in ("pq", "sq", "rq", "pq_th", "rq_th"):
    assert results[key] == pytest.approx(float(expected[key]), abs=1e-12), key
  assert results["miou"] == pytest.approx(float(miou.result()["miou"]), abs=1e-12)
  padded = PanopticQuality(NUM_CLASSES, IGNORE, DIVISOR, THINGS)
  padded.update_state(gt, pred)
  assert float(padded.result()["rq_th"]) != pytest.approx(results["rq_th"])  # case matters
  for i, (height, width) in enumerate(zip(heights, widths)):
    written = np.asarray(Image.open(f"{writer.png_dir}/img_{i}_panoptic.png"))
    assert written.shape[:2] == (height, width)


def test_real_post_processing_fits_the_evaluator():
  """The real `ops.panoptic_inference` plugs in (interface check, values only bounded)."""
  gt, _, images = _example_batch(np.random.default_rng(4), count=2)
  results = _evaluate(
      _dataset(gt, images).rebatch(2),
      post_processing_options=post_processing.PostProcessingOptions(
          THINGS, DIVISOR, IGNORE, stuff_area=0), batch_size=2, compute_ap=True)
  for key in ("pq", "miou", "ap"):
    assert 0.0 <= results[key] <= 1.0
  assert results["miou"] > 0.5  # Semantic predictions decode correctly.


class _RecordingStrategy:
  """Delegates to a strategy and records the dtypes of everything passed to `run`."""

  def __init__(self, strategy):
    self._strategy = strategy
    self.run_dtypes = set()

  def run(self, fn, args=(), kwargs=None):
    for value in tf.nest.flatten((args, kwargs or {}), expand_composites=True):
      if isinstance(value, (tf.Tensor, tf.Variable)):
        self.run_dtypes.add(value.dtype)
    return self._strategy.run(fn, args=args, kwargs=kwargs)

  def __getattr__(self, name):
    return getattr(self._strategy, name)


def test_xla_compiled_replica_step_sees_no_strings(two_cpu_strategy):
  """TPU-shaped check: each replica's prediction (model, TTA, real post-processing)
  compiles with XLA under 2 replicas, only numeric tensors enter `strategy.run` although
  the dataset has string ids, and the results equal the uncompiled single-replica run."""
  gt, _, images = _example_batch(np.random.default_rng(5), count=5)
  options = post_processing.PostProcessingOptions(THINGS, DIVISOR, IGNORE, stuff_area=0,
                                                  top_k=8)
  recording = _RecordingStrategy(two_cpu_strategy)
  with two_cpu_strategy.scope():
    evaluator = panoptic.PanopticEvaluator(decoding_model, options, num_classes=NUM_CLASSES,
                                           compute_ap=True)
  loop = evaluation.EvalLoop(recording, evaluator, 4, jit_compile=True)
  compiled = loop.evaluate(_dataset(gt, images))
  assert recording.run_dtypes and tf.string not in recording.run_dtypes
  reference = _evaluate(_dataset(gt, images), post_processing_options=options,
                        compute_ap=True)
  for key in ("pq", "sq", "rq", "miou", "ap", "ap50"):
    assert compiled[key] == pytest.approx(reference[key], abs=1e-9), key


def test_xla_train_step_under_two_replicas_sees_no_strings(tmp_path, two_cpu_strategy):
  """The training side of the same check: the XLA-compiled replica gradients run under 2
  replicas on numeric features only, with the losses of the uncompiled step."""
  rng = np.random.default_rng(6)
  batch = {"image": rng.normal(size=(4, 4, 4, 3)).astype(np.float32),
           "target": rng.normal(size=(4, 4, 4, 2)).astype(np.float32)}

  def dataset_fn(context):
    per_replica = context.get_per_replica_batch_size(4)
    return tf.data.Dataset.from_tensor_slices(batch).batch(per_replica).repeat()

  def losses(features, outputs):
    per_example = tf.reduce_mean(tf.square(outputs - features["target"]), axis=[1, 2, 3])
    total = tf.nn.compute_average_loss(per_example, global_batch_size=4)
    return {"total": total}

  histories = []
  for jit_compile in (True, False):
    recording = _RecordingStrategy(two_cpu_strategy)
    with two_cpu_strategy.scope():
      model = tf_keras.Sequential([tf_keras.layers.Conv2D(
          2, 3, padding="same", kernel_initializer=tf_keras.initializers.GlorotUniform(1))])
      model.build((None, 4, 4, 3))
      optimizer = tf_keras.optimizers.SGD(0.1)
    trainer = loop.Trainer(
        strategy=recording, model=model, optimizer=optimizer, compute_losses=losses,
        loss_names=("total",), train_dataset_fn=dataset_fn, global_batch_size=4,
        total_steps=2, model_dir=str(tmp_path / f"jit_{jit_compile}"), summary_interval=1,
        jit_compile=jit_compile, log_fn=lambda _: None)
    trainer.train()
    assert recording.run_dtypes and tf.string not in recording.run_dtypes
    histories.append([v.numpy() for v in model.weights])
  for compiled, plain in zip(*histories):
    np.testing.assert_allclose(compiled, plain, rtol=1e-5, atol=1e-6)
