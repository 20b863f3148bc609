"""Input pipeline throughput vs a training step, at 513x513 crops.

Writes large shapes images (rendered at 640x960 by the procedural generator, in COCO
format, through the real COCO converter) and measures examples/s of the panoptic training
pipeline (decode, random scale 0.5-2.0, pad/crop 513², flip, Panoptic-DeepLab targets).
The reference is a small conv net's training step on the same batch size and crop, timed
in the same run. Ratio > 1 means the pipeline produces examples faster than the step
consumes them.

  python benchmarks/input_pipeline.py [--quick]
"""
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras  # noqa: E402

from deeplab_axial.data import pipeline  # noqa: E402
from deeplab_axial.data.converters import shapes  # noqa: E402

flags.DEFINE_bool("quick", False, "Fewer images and steps (smoke run).")
flags.DEFINE_integer("batch_size", 4, "Batch size of both the pipeline and the model.")
flags.DEFINE_integer("crop", 513, "Square crop size.")
FLAGS = flags.FLAGS


def _small_model(crop):
  inputs = tf_keras.Input([crop, crop, 3])
  x = inputs / 127.5 - 1.0
  for filters in (32, 64, 128, 128):
    x = tf_keras.layers.Conv2D(filters, 3, strides=2, padding="same", activation="relu")(x)
  x = tf_keras.layers.Conv2D(7, 1)(x)
  x = tf_keras.layers.UpSampling2D(16, interpolation="bilinear")(x)
  return tf_keras.Model(inputs, tf_keras.layers.Cropping2D(((0, 15), (0, 15)))(x))


def _time_pipeline(dataset, num_batches):
  iterator = iter(dataset)
  next(iterator)  # warm-up: graph tracing, autotune start
  start = time.perf_counter()
  for _ in range(num_batches):
    next(iterator)
  return time.perf_counter() - start


def _time_model(model, batch, num_steps):
  optimizer = tf_keras.optimizers.SGD(0.01)

  @tf.function
  def step(image, semantic):
    with tf.GradientTape() as tape:
      logits = model(image, training=True)
      loss = tf.reduce_mean(tf_keras.losses.sparse_categorical_crossentropy(
          tf.clip_by_value(semantic, 0, 6), logits, from_logits=True))
    optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_variables),
                                  model.trainable_variables))
    return loss

  step(batch["image"], batch["semantic"]).numpy()
  start = time.perf_counter()
  for _ in range(num_steps):
    loss = step(batch["image"], batch["semantic"])
  loss.numpy()
  return time.perf_counter() - start


def main(argv):
  del argv
  num_images = 8 if FLAGS.quick else 32
  num_batches = 3 if FLAGS.quick else 15
  workdir = tempfile.mkdtemp(prefix="input_pipeline_benchmark_")
  config = shapes.ShapesConfig(image_size=(640, 960), num_train=num_images, num_val=2)
  raw = shapes.generate_shapes_dataset(os.path.join(workdir, "raw"), config)
  patterns = shapes.convert_shapes(raw, workdir, config, num_shards=4, show_progress=False)
  info = shapes.shapes_dataset_info(config)
  dataset = pipeline.build_panoptic_dataset(
      patterns["train"], info, is_training=True, crop_size=(FLAGS.crop, FLAGS.crop),
      batch_size=FLAGS.batch_size, shuffle_buffer=num_images)
  pipeline_seconds = _time_pipeline(dataset, num_batches)
  pipeline_rate = num_batches * FLAGS.batch_size / pipeline_seconds

  model = _small_model(FLAGS.crop)
  batch = next(iter(dataset))
  model_seconds = _time_model(model, batch, num_batches)
  model_rate = num_batches * FLAGS.batch_size / model_seconds
  print(f"crop {FLAGS.crop}x{FLAGS.crop}, batch {FLAGS.batch_size}, "
        f"{tf.config.threading.get_inter_op_parallelism_threads() or 'default'} inter-op "
        f"threads, {os.cpu_count()} CPUs")
  print(f"input pipeline:          {pipeline_rate:8.2f} examples/s")
  print(f"small conv training step:{model_rate:8.2f} examples/s")
  shutil.rmtree(workdir)
  print(f"ratio pipeline / step:   {pipeline_rate / model_rate:8.2f}  (> 1: input is not "
        f"the bottleneck)")


if __name__ == "__main__":
  app.run(main)
