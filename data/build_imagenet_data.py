r"""Converts ImageNet (ILSVRC-2012, extracted folders) to TFRecords.

  python data/build_imagenet_data.py --input_dir=/data/imagenet \
      --output_dir=/data/imagenet_tfrecord --split=train
"""
from deeplab_axial import cli

cli.start_quietly()

from absl import flags  # noqa: E402  (after start_quietly, as everything below)

from deeplab_axial.data.converters import common  # noqa: E402
from deeplab_axial.data.converters import imagenet  # noqa: E402

common.define_converter_flags(default_split="train", default_num_shards=128)
flags.DEFINE_string("val_labels_file", None,
                    "For a flat val/ folder: one synset per line (or 'file synset' lines). "
                    "Defaults to the list shipped with tensorflow_datasets.")
flags.adopt_module_key_flags(common)
FLAGS = flags.FLAGS


def main(argv):
  del argv
  imagenet.convert_imagenet(FLAGS.input_dir, FLAGS.output_dir, FLAGS.split,
                            num_shards=FLAGS.num_shards, num_workers=FLAGS.num_workers,
                            skip_bad_examples=FLAGS.skip_bad_examples,
                            val_labels_file=FLAGS.val_labels_file)


if __name__ == "__main__":
  flags.mark_flags_as_required(["input_dir"])
  cli.run(main)
