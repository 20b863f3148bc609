r"""Trains and/or evaluates an experiment described by a textproto config.

  python trainer/train.py --config_file=configs/shapes/axial_deeplab_demo.textproto \
      --mode=train_and_eval --model_dir=/tmp/demo

Modes: train, eval, train_and_eval, continuous_eval, and rehearse: everything the run does
except the long loop, at the config's real shapes (build, one training step, eval and export
traces, initial checkpoint), in minutes on a CPU; it ends with a summary, or one error line
naming the config field to change:

  python trainer/train.py --config_file=configs/cityscapes/axial_deeplab_xl.textproto \
      --mode=rehearse

Training resumes automatically from the latest checkpoint in --model_dir.
"""
from deeplab_axial import cli

cli.start_quietly()

from absl import flags  # noqa: E402  (after start_quietly, as everything below)

from deeplab_axial.training import experiment  # noqa: E402

flags.DEFINE_string("config_file", None, "Path to an ExperimentOptions textproto.")
flags.DEFINE_enum("mode", "train_and_eval", experiment.MODES, "What to run.")
flags.DEFINE_string("model_dir", None, "Directory for checkpoints, summaries and metrics "
                    "(required except for --mode=rehearse).")
flags.DEFINE_multi_string("config_override", [],
                          "Text-format override such as 'train.batch_size: 8' (repeatable).")
flags.DEFINE_integer("num_gpus", 0, "GPUs for MirroredStrategy (0: CPU or one device).")
flags.DEFINE_integer("num_cpu_replicas", 0,
                     "Split the CPU into N logical devices and mirror over them (testing).")
flags.DEFINE_string("tpu", None, "TPU name/address for TPUStrategy ('local' on a TPU VM).")
flags.DEFINE_string("data_dir", None,
                    "Directory that relative dataset file patterns are resolved against "
                    "(default: $DEEPLAB_AXIAL_DATA_DIR or ./data_cache).")
flags.mark_flags_as_required(["config_file"])


def main(argv):
  del argv
  flag_values = flags.FLAGS
  cli.say(f"{flag_values.mode}: building the model and the input pipeline of "
          f"{flag_values.config_file}...")
  experiment.run_from_flags(
      config_file=flag_values.config_file, mode=flag_values.mode,
      model_dir=flag_values.model_dir, overrides=flag_values.config_override,
      num_gpus=flag_values.num_gpus, num_cpu_replicas=flag_values.num_cpu_replicas,
      tpu=flag_values.tpu, data_dir=flag_values.data_dir)


if __name__ == "__main__":
  cli.run(main)
