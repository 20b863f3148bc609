"""Tests of panoptic_inference against a NumPy reference and hand-built cases."""
import numpy as np
import pytest
import tensorflow as tf

from deeplab_axial.ops import find_centers
from deeplab_axial.ops import panoptic_inference
from tests.reference.panoptic_numpy import panoptic_inference_reference
from tests.reference.panoptic_numpy import softmax

DIVISOR = 1000
VOID = 255 * DIVISOR
NUM_CLASSES = 6
THINGS = (1, 3, 4)


def _random_outputs(rng, batch, height, width, quantize_offsets=False):
  logits = (rng.normal(size=(batch, height, width, NUM_CLASSES)) * 2).astype(np.float32)
  heatmap = (rng.uniform(size=(batch, height, width, 1))**4).astype(np.float32)
  offset = (rng.normal(size=(batch, height, width, 2)) * 10).astype(np.float32)
  if quantize_offsets:  # multiples of 1/4: exact float arithmetic, so exact distance ties
    offset = np.round(offset * 4) / 4
  return logits, heatmap, offset


def _check_against_reference(outputs, logits, heatmap, offset, options):
  for index in range(logits.shape[0]):
    panoptic, semantic, instance, scores = panoptic_inference_reference(
        logits[index], heatmap[index], offset[index], **options)
    np.testing.assert_array_equal(outputs["panoptic"][index], panoptic)
    np.testing.assert_array_equal(outputs["semantic"][index], semantic)
    np.testing.assert_array_equal(outputs["instance"][index], instance)
    ids = outputs["instance_panoptic_ids"][index].numpy()
    got_scores = dict(zip(ids[ids >= 0].tolist(),
                          outputs["instance_scores"][index].numpy()[ids >= 0].tolist()))
    assert got_scores.keys() == scores.keys()
    for panoptic_id, score in scores.items():
      np.testing.assert_allclose(got_scores[panoptic_id], score, rtol=1e-5)


@pytest.mark.parametrize("options", [
    dict(nms_kernel=7, top_k=200, stuff_area=100),
    dict(nms_kernel=3, top_k=15, stuff_area=300, thing_area=20),  # top-k saturates
    dict(nms_kernel=5, top_k=40, stuff_area=0, center_threshold=0.5),
])
def test_matches_numpy_reference(options):
  rng = np.random.default_rng(len(str(options)))
  logits, heatmap, offset = _random_outputs(rng, 2, 33, 47)
  options = dict(thing_class_ids=THINGS, label_divisor=DIVISOR, **options)
  outputs = panoptic_inference(logits, heatmap, offset, **options)
  _check_against_reference(outputs, logits, heatmap, offset, options)


def test_matches_numpy_reference_with_exact_distance_ties():
  logits, heatmap, offset = _random_outputs(np.random.default_rng(7), 1, 29, 31,
                                            quantize_offsets=True)
  options = dict(thing_class_ids=THINGS, label_divisor=DIVISOR, nms_kernel=3, stuff_area=50)
  outputs = panoptic_inference(logits, heatmap, offset, **options)
  _check_against_reference(outputs, logits, heatmap, offset, options)


def _one_hot_logits(semantic):
  return (np.eye(NUM_CLASSES, dtype=np.float32)[semantic] * 10.0)[None]


def _offsets_to(centers_of_pixels):
  """Offsets [1, h, w, 2] pointing each pixel to the given (y, x) per pixel."""
  height, width = centers_of_pixels.shape[:2]
  grid = np.stack(np.meshgrid(np.arange(height), np.arange(width), indexing="ij"), -1)
  return (centers_of_pixels - grid).astype(np.float32)[None]


def _heatmap_with_peaks(height, width, peaks):
  heatmap = np.zeros((1, height, width, 1), np.float32)
  for (y, x), value in peaks.items():
    heatmap[0, y, x, 0] = value
  return heatmap


def _run(semantic, heatmap, offset, **options):
  options = {"thing_class_ids": THINGS, "label_divisor": DIVISOR, "stuff_area": 4, **options}
  outputs = panoptic_inference(_one_hot_logits(semantic), heatmap, offset, **options)
  return {k: v.numpy()[0] for k, v in outputs.items()}


def test_two_touching_instances_of_one_class():
  semantic = np.zeros((8, 12), np.int64)  # stuff class 0
  semantic[2:6, 2:6] = 1
  semantic[2:6, 6:10] = 1  # touching the first
  centers = np.zeros((8, 12, 2))
  centers[:, :6] = (3, 3)
  centers[:, 6:] = (4, 8)
  heatmap = _heatmap_with_peaks(8, 12, {(3, 3): 0.6, (4, 8): 0.9})
  outputs = _run(semantic, heatmap, _offsets_to(centers), nms_kernel=3)
  expected = np.zeros((8, 12), np.int64)
  expected[2:6, 2:6] = 1 * DIVISOR + 2  # lower centre score -> id 2
  expected[2:6, 6:10] = 1 * DIVISOR + 1
  np.testing.assert_array_equal(outputs["panoptic"], expected)
  np.testing.assert_array_equal(outputs["instance"], expected % DIVISOR)
  np.testing.assert_array_equal(outputs["instance_panoptic_ids"][:2], [1001, 1002])
  class_probability = 1 / (1 + (NUM_CLASSES - 1) * np.exp(-10.0))  # of the one-hot logits
  np.testing.assert_allclose(outputs["instance_scores"][:2],
                             [0.9 * class_probability, 0.6 * class_probability], rtol=1e-6)
  np.testing.assert_array_equal(outputs["center_points"][:2], [[4, 8], [3, 3]])
  assert np.all(outputs["instance_panoptic_ids"][2:] == -1)


def test_thing_without_centre_is_void():
  semantic = np.full((8, 8), 2, np.int64)
  semantic[1:4, 1:4] = 3
  heatmap = _heatmap_with_peaks(8, 8, {(2, 2): 0.05})  # below the 0.1 threshold
  outputs = _run(semantic, heatmap, np.zeros((1, 8, 8, 2), np.float32))
  np.testing.assert_array_equal(outputs["panoptic"], np.where(semantic == 3, VOID, 2000))
  assert not outputs["instance"].any()
  assert not outputs["center_scores"].any()


def test_stuff_only_image_and_small_stuff_becomes_void():
  semantic = np.zeros((10, 10), np.int64)
  semantic[:, 5:] = 5
  semantic[0, 0] = 2  # 1-pixel region of stuff class 2
  heatmap = _heatmap_with_peaks(10, 10, {(5, 5): 0.9})  # a centre, but no thing pixels
  outputs = _run(semantic, heatmap, np.zeros((1, 10, 10, 2), np.float32), stuff_area=2)
  expected = semantic * DIVISOR
  expected[0, 0] = VOID
  np.testing.assert_array_equal(outputs["panoptic"], expected)
  np.testing.assert_array_equal(outputs["semantic"], semantic)
  assert not outputs["instance"].any()
  assert np.all(outputs["instance_panoptic_ids"] == -1)


def test_majority_vote_and_per_class_ids():
  semantic = np.zeros((6, 12), np.int64)
  semantic[0:3, 0:4] = 1
  semantic[0, 0:2] = 3  # minority pixels of another thing class join the instance
  semantic[3:6, 0:4] = 4  # a second instance, class 4
  semantic[0:3, 6:9] = 1  # a third instance, class 1
  semantic[3:6, 6:7] = 3
  semantic[3:6, 7:8] = 4  # 3 vs 3 votes: the smaller class id (3) wins
  centers = np.zeros((6, 12, 2))
  centers[0:3, 0:4] = (1, 1)
  centers[3:6, 0:4] = (4, 1)
  centers[0:3, 6:9] = (1, 7)
  centers[3:6, 6:8] = (4, 7)
  heatmap = _heatmap_with_peaks(6, 12, {(1, 1): 0.9, (4, 1): 0.8, (1, 7): 0.7, (4, 7): 0.6})
  outputs = _run(semantic, heatmap, _offsets_to(centers), nms_kernel=1, stuff_area=1)
  expected = np.zeros((6, 12), np.int64)
  expected[0:3, 0:4] = 1001
  expected[3:6, 0:4] = 4001
  expected[0:3, 6:9] = 1002
  expected[3:6, 6:8] = 3001
  np.testing.assert_array_equal(outputs["panoptic"], expected)
  np.testing.assert_array_equal(outputs["semantic"], semantic)  # argmax, not the vote


def test_small_instance_below_thing_area_is_void():
  semantic = np.zeros((6, 6), np.int64)
  semantic[1:3, 1:3] = 4
  heatmap = _heatmap_with_peaks(6, 6, {(1, 1): 0.9})
  outputs = _run(semantic, heatmap, np.zeros((1, 6, 6, 2), np.float32), thing_area=5)
  np.testing.assert_array_equal(outputs["panoptic"], np.where(semantic == 4, VOID, 0))


def test_centre_ties_keep_raster_order_and_plateaus():
  heatmap = _heatmap_with_peaks(9, 9, {(6, 1): 0.5, (1, 7): 0.5, (1, 2): 0.5, (4, 4): 0.3})
  scores, points, valid = find_centers(tf.constant(heatmap), 0.1, 3, top_k=2)
  np.testing.assert_array_equal(points[0], [[1, 2], [1, 7]])
  assert valid.numpy().all()
  plateau = _heatmap_with_peaks(5, 5, {(2, 2): 0.5, (2, 3): 0.5})
  scores, points, valid = find_centers(tf.constant(plateau), 0.1, 3, top_k=4)
  np.testing.assert_array_equal(points[0][:2], [[2, 2], [2, 3]])
  np.testing.assert_array_equal(valid[0], [True, True, False, False])
  np.testing.assert_array_equal(scores[0], [0.5, 0.5, 0.0, 0.0])


def test_batch_of_different_images_equals_per_image():
  logits, heatmap, offset = _random_outputs(np.random.default_rng(11), 3, 21, 26)
  options = dict(thing_class_ids=THINGS, label_divisor=DIVISOR, top_k=30, stuff_area=40)
  batched = panoptic_inference(logits, heatmap, offset, **options)
  for index in range(3):
    single = panoptic_inference(logits[index:index + 1], heatmap[index:index + 1],
                                offset[index:index + 1], **options)
    for name, value in single.items():
      np.testing.assert_array_equal(batched[name][index], value[0], err_msg=name)


def test_jit_compile_equals_eager():
  options = dict(thing_class_ids=THINGS, label_divisor=DIVISOR, top_k=50, stuff_area=60)
  compiled = tf.function(lambda *args: panoptic_inference(*args, **options),
                         jit_compile=True)
  for quantize in (True, False):
    inputs = _random_outputs(np.random.default_rng(5), 2, 25, 34, quantize_offsets=quantize)
    eager = panoptic_inference(*inputs, **options)
    jitted = compiled(*inputs)
    for name in eager:
      np.testing.assert_allclose(jitted[name], eager[name], rtol=1e-5, err_msg=name)
      if eager[name].dtype.is_integer:
        np.testing.assert_array_equal(jitted[name], eager[name], err_msg=name)


def test_unknown_shapes_in_tf_function():
  options = dict(thing_class_ids=THINGS, label_divisor=DIVISOR, top_k=20, stuff_area=30)
  function = tf.function(
      lambda *args: panoptic_inference(*args, **options),
      input_signature=[tf.TensorSpec([None, None, None, NUM_CLASSES]),
                       tf.TensorSpec([None, None, None, 1]),
                       tf.TensorSpec([None, None, None, 2])])
  inputs = _random_outputs(np.random.default_rng(6), 2, 17, 23)
  got = function(*inputs)
  np.testing.assert_array_equal(got["panoptic"], panoptic_inference(*inputs, **options)["panoptic"])


def test_probabilities_input_gives_the_same_result():
  logits, heatmap, offset = _random_outputs(np.random.default_rng(8), 1, 19, 22)
  options = dict(thing_class_ids=THINGS, label_divisor=DIVISOR, stuff_area=30)
  from_logits = panoptic_inference(logits, heatmap, offset, **options)
  from_probs = panoptic_inference(softmax(logits).astype(np.float32), heatmap, offset,
                                  semantic_is_probabilities=True, **options)
  for name in ("panoptic", "semantic", "instance", "instance_panoptic_ids"):
    np.testing.assert_array_equal(from_probs[name], from_logits[name], err_msg=name)
  np.testing.assert_allclose(from_probs["instance_scores"], from_logits["instance_scores"],
                             rtol=1e-5)


@pytest.mark.parametrize("change, message", [
    ({"thing_class_ids": (1, 9)}, "thing_class_ids"),
    ({"label_divisor": 100}, "label_divisor"),
    ({"nms_kernel": 4}, "nms_kernel"),
    ({"top_k": 0}, "top_k"),
    ({"heatmap_shape": (1, 8, 9, 1)}, "center_heatmap"),
    ({"offset_shape": (1, 8, 8, 3)}, "center_offset"),
])
def test_bad_arguments_raise_value_error(change, message):
  heatmap = np.zeros(change.pop("heatmap_shape", (1, 8, 8, 1)), np.float32)
  offset = np.zeros(change.pop("offset_shape", (1, 8, 8, 2)), np.float32)
  options = {"thing_class_ids": THINGS, "label_divisor": DIVISOR, **change}
  with pytest.raises(ValueError, match=message):
    panoptic_inference(np.zeros((1, 8, 8, NUM_CLASSES), np.float32), heatmap, offset,
                       **options)


@pytest.mark.parametrize("jit_compile", [False, True])
def test_grouping_in_several_pixel_chunks(monkeypatch, jit_compile):
  from deeplab_axial.ops import post_processing  # pylint: disable=import-outside-toplevel
  # 2 images x 20 slots x 37 pixels per chunk: 19·23 = 437 pixels -> 12 chunks, padded.
  monkeypatch.setattr(post_processing, "_MAX_DISTANCES_PER_CHUNK", 2 * 20 * 37)
  logits, heatmap, offset = _random_outputs(np.random.default_rng(9), 2, 19, 23)
  options = dict(thing_class_ids=THINGS, label_divisor=DIVISOR, top_k=20, stuff_area=30)
  function = tf.function(lambda *args: panoptic_inference(*args, **options),
                         jit_compile=jit_compile)
  _check_against_reference(function(logits, heatmap, offset), logits, heatmap, offset,
                           options)
