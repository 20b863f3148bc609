"""Converts COCO panoptic 2017 (official layout) to TFRecords.

  python data/build_coco_data.py --input_dir=/data/coco --output_dir=/data/coco_tfrecord \
      --split=train
"""
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from deeplab_axial.data.converters import coco  # noqa: E402
from deeplab_axial.data.converters import common  # noqa: E402

common.define_converter_flags(default_split="train", default_num_shards=64)
FLAGS = flags.FLAGS


def main(argv):
  del argv
  coco.convert_coco(FLAGS.input_dir, FLAGS.output_dir, FLAGS.split,
                    num_shards=FLAGS.num_shards, num_workers=FLAGS.num_workers,
                    skip_bad_examples=FLAGS.skip_bad_examples)


if __name__ == "__main__":
  flags.mark_flags_as_required(["input_dir"])
  app.run(main)
