r"""Converts COCO panoptic 2017 (official layout) to TFRecords.

  python data/build_coco_data.py --input_dir=/data/coco --output_dir=/data/coco_tfrecord \
      --split=train

A bring-your-own dataset in the same layout: add --dataset_name=NAME (classes from the
JSON's categories; see docs/data.md), then set dataset.dataset_info_file to
OUTPUT_DIR/dataset_info.json in the config.
"""
from deeplab_axial import cli

cli.start_quietly()

from absl import flags  # noqa: E402  (after start_quietly, as everything below)

from deeplab_axial.data.converters import coco  # noqa: E402
from deeplab_axial.data.converters import common  # noqa: E402

common.define_converter_flags(default_split="train", default_num_shards=64)
flags.adopt_module_key_flags(common)
flags.DEFINE_string("dataset_name", None,
                    "Set for a custom dataset in COCO panoptic layout: its name; the classes "
                    "come from the annotation JSON's categories instead of COCO's.")
flags.DEFINE_integer("label_divisor", 1000,
                     "Custom datasets: panoptic = class * label_divisor + instance.")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  info = (coco.custom_dataset_info(FLAGS.input_dir, FLAGS.split, FLAGS.dataset_name,
                                   label_divisor=FLAGS.label_divisor)
          if FLAGS.dataset_name else None)
  coco.convert_coco(FLAGS.input_dir, FLAGS.output_dir, FLAGS.split,
                    num_shards=FLAGS.num_shards, num_workers=FLAGS.num_workers,
                    skip_bad_examples=FLAGS.skip_bad_examples, dataset_info=info)


if __name__ == "__main__":
  flags.mark_flags_as_required(["input_dir"])
  cli.run(main)
