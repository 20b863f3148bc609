r"""Converts Mapillary Vistas panoptic (v1.2 or v2.0) to TFRecords.

  python data/build_mapillary_data.py --input_dir=/data/vistas \
      --output_dir=/data/vistas_tfrecord --split=training --version=v1.2
"""
from deeplab_axial import cli

cli.start_quietly()

from absl import flags  # noqa: E402  (after start_quietly, as everything below)

from deeplab_axial.data.converters import common  # noqa: E402
from deeplab_axial.data.converters import mapillary  # noqa: E402

common.define_converter_flags(default_split="training", default_num_shards=20)
flags.DEFINE_enum("version", "v1.2", ["v1.2", "v2.0"], "Vistas annotation version.")
flags.adopt_module_key_flags(common)
FLAGS = flags.FLAGS


def main(argv):
  del argv
  mapillary.convert_mapillary(FLAGS.input_dir, FLAGS.output_dir, FLAGS.split,
                              version=FLAGS.version, num_shards=FLAGS.num_shards,
                              num_workers=FLAGS.num_workers,
                              skip_bad_examples=FLAGS.skip_bad_examples)


if __name__ == "__main__":
  flags.mark_flags_as_required(["input_dir"])
  cli.run(main)
