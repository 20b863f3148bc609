r"""Generates the procedural "shapes" panoptic dataset in COCO format and converts it.

  python data/build_shapes_data.py --output_dir=/tmp/shapes

The raw COCO-format files go to --input_dir (default: OUTPUT_DIR/raw); the TFRecords go to
--output_dir. Nothing is redone when the output already exists with the same settings.
"""
from deeplab_axial import cli

cli.start_quietly()

from absl import flags  # noqa: E402  (after start_quietly, as everything below)

from deeplab_axial.data.converters import common  # noqa: E402
from deeplab_axial.data.converters import shapes  # noqa: E402

common.define_converter_flags(default_split=None, default_num_shards=2)
flags.DEFINE_integer("image_size", 64, "Height and width of the generated images.")
flags.DEFINE_integer("num_train", 300, "Training images.")
flags.DEFINE_integer("num_val", 50, "Validation images.")
flags.DEFINE_integer("seed", 0, "Generator seed.")
flags.adopt_module_key_flags(common)
FLAGS = flags.FLAGS


def main(argv):
  del argv
  config = shapes.ShapesConfig(image_size=(FLAGS.image_size, FLAGS.image_size),
                               num_train=FLAGS.num_train, num_val=FLAGS.num_val,
                               seed=FLAGS.seed)
  if FLAGS.input_dir is None:
    patterns = shapes.ensure_shapes_tfrecords(
        FLAGS.output_dir, image_size=config.image_size, num_train=config.num_train,
        num_val=config.num_val, seed=config.seed, num_shards=FLAGS.num_shards,
        num_workers=FLAGS.num_workers, show_progress=True)
  else:
    shapes.generate_shapes_dataset(FLAGS.input_dir, config)
    patterns = shapes.convert_shapes(FLAGS.input_dir, FLAGS.output_dir, config,
                                     num_shards=FLAGS.num_shards,
                                     num_workers=FLAGS.num_workers,
                                     skip_bad_examples=FLAGS.skip_bad_examples)
  for split, pattern in patterns.items():
    print(f"{split}: {pattern}")


if __name__ == "__main__":
  cli.run(main)
