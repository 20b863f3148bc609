r"""Converts COCO panoptic 2017 (official layout) to TFRecords.

  python data/build_coco_data.py --input_dir=/data/coco --output_dir=/data/coco_tfrecord \
      --split=train
"""
from deeplab_axial import cli

cli.start_quietly()

from absl import flags  # noqa: E402  (after start_quietly, as everything below)

from deeplab_axial.data.converters import coco  # noqa: E402
from deeplab_axial.data.converters import common  # noqa: E402

common.define_converter_flags(default_split="train", default_num_shards=64)
flags.adopt_module_key_flags(common)
FLAGS = flags.FLAGS


def main(argv):
  del argv
  coco.convert_coco(FLAGS.input_dir, FLAGS.output_dir, FLAGS.split,
                    num_shards=FLAGS.num_shards, num_workers=FLAGS.num_workers,
                    skip_bad_examples=FLAGS.skip_bad_examples)


if __name__ == "__main__":
  flags.mark_flags_as_required(["input_dir"])
  cli.run(main)
