r"""Converts Cityscapes panoptic (cityscapesscripts createPanopticImgs output) to TFRecords.

  python data/build_cityscapes_data.py --input_dir=/data/cityscapes \
      --output_dir=/data/cityscapes_tfrecord --split=train
"""
from deeplab_axial import cli

cli.start_quietly()

from absl import flags  # noqa: E402  (after start_quietly, as everything below)

from deeplab_axial.data.converters import cityscapes  # noqa: E402
from deeplab_axial.data.converters import common  # noqa: E402

common.define_converter_flags(default_split="train", default_num_shards=10)
flags.adopt_module_key_flags(common)
FLAGS = flags.FLAGS


def main(argv):
  del argv
  cityscapes.convert_cityscapes(FLAGS.input_dir, FLAGS.output_dir, FLAGS.split,
                                num_shards=FLAGS.num_shards, num_workers=FLAGS.num_workers,
                                skip_bad_examples=FLAGS.skip_bad_examples)


if __name__ == "__main__":
  flags.mark_flags_as_required(["input_dir"])
  cli.run(main)
