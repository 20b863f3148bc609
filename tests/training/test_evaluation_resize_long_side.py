"""Evaluator hook of `dataset.resize_long_side`: predictions made on the resized image
are scored and written at each image's original size (an image larger than the crop)."""
import tensorflow as tf

from deeplab_axial.data import pipeline
from deeplab_axial.tasks import panoptic
from deeplab_axial.tasks import post_processing
from deeplab_axial.training import evaluation
from tests.data.test_pipeline import INFO, write_records
from tests.data.test_pipeline_resize_photometric import blocky_label


def class_from_red_model(images):
  """Semantic logits that pick the class written in the red channel (see write_records)."""
  classes = tf.cast(tf.round(images[..., 0]), tf.int32)
  zeros = tf.zeros_like(images[..., :1])
  return {"semantic_logits": 20.0 * tf.one_hot(classes, INFO.num_classes),
          "center_heatmap": zeros, "center_offset": tf.concat([zeros, zeros], -1)}


class _Collect:
  def __init__(self):
    self.written = {}

  def write(self, image_id, panoptic):
    self.written[image_id] = panoptic


def test_evaluator_scores_and_writes_at_the_original_size(tmp_path):
  label = blocky_label()  # 100 x 80, larger than the 65 x 65 crop
  dataset = pipeline.build_panoptic_dataset(
      write_records(tmp_path, [label]), INFO, is_training=False, batch_size=1,
      crop_size=(65, 65), generate_targets=False, resize_long_side=64)
  evaluator = panoptic.PanopticEvaluator(
      class_from_red_model, post_processing.PostProcessingOptions(
          INFO.thing_class_ids, INFO.label_divisor, INFO.ignore_label, stuff_area=1),
      num_classes=INFO.num_classes)
  loop = evaluation.EvalLoop(tf.distribute.get_strategy(), evaluator, 1)
  writer = _Collect()
  results = loop.evaluate(dataset, prediction_writer=writer)
  (written,) = writer.written.values()
  assert written.shape == label.shape
  predicted, truth = written // INFO.label_divisor, label // INFO.label_divisor
  # No centres are predicted, so thing pixels are void in the panoptic output; the stuff
  # pixels keep their class except next to block edges (resized down and back, and the
  # class colours blurred there by the bilinear image resize).
  labelled = predicted != INFO.ignore_label
  assert (predicted[labelled] == truth[labelled]).mean() > 0.95
  assert labelled[truth == 0].mean() > 0.95
  # The semantic metric compares at 100 x 80 too (without the hook the shapes differ);
  # edges cost a few percent of IoU on 40 x 40 blocks.
  assert results["miou"] > 0.85
