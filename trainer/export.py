r"""Exports a trained checkpoint as a TF Serving SavedModel.

  python trainer/export.py --config_file=configs/shapes/axial_deeplab_demo.textproto \
      --checkpoint=/tmp/demo --output_dir=/tmp/demo_export

writes `<output_dir>/<version>/` (saved_model.pb, variables/, fingerprint.pb,
assets.extra/deeplab_axial_export.json). `--checkpoint` is a checkpoint prefix or a
model_dir (its latest checkpoint). The version is --version, else `export.version` when the
config sets it, else 1 + the largest existing version. See docs/serving.md.
"""
from deeplab_axial import cli

cli.start_quietly()

from absl import flags  # noqa: E402  (after start_quietly, as everything below)

flags.DEFINE_string("config_file", None, "Path to an ExperimentOptions textproto.")
flags.DEFINE_multi_string("config_override", [],
                          "Text-format override such as 'eval.top_k: 100' (repeatable).")
flags.DEFINE_string("checkpoint", None, "Checkpoint prefix, or a model_dir (latest one).")
flags.DEFINE_string("output_dir", None, "TF Serving model base path; writes <version>/.")
flags.DEFINE_integer("version", None, "Version number (default: see the module doc).")
flags.DEFINE_bool("overwrite", False, "Replace an existing version directory.")
flags.DEFINE_bool("with_preprocessing_crop", False,
                  "Static-shape variant (TPU/XLA): the model runs at export.crop_size (or "
                  "the eval crop size); inputs are padded/resized to it and cropped back.")
flags.DEFINE_bool("jit_compile", False, "XLA-compile the static variant's model + "
                  "post-processing (needs --with_preprocessing_crop).")
flags.DEFINE_bool("include_semantic_probs", True, "Output semantic_probs.")
flags.DEFINE_string("tflite_output", None,
                    "Also write a TFLite model of the semantic path here (static size).")
flags.mark_flags_as_required(["config_file", "checkpoint", "output_dir"])


def main(argv):
  del argv
  # pylint: disable=import-outside-toplevel
  from deeplab_axial import config as config_lib
  from deeplab_axial.export import from_config
  flag_values = flags.FLAGS
  config = config_lib.load_config(flag_values.config_file, flag_values.config_override)
  cli.say(f"exporting {flag_values.checkpoint}: building the model, restoring the "
          "checkpoint and tracing the serving functions (about a minute)...")
  result = from_config.export_from_config(
      config, flag_values.checkpoint, flag_values.output_dir, version=flag_values.version,
      overwrite=flag_values.overwrite,
      with_preprocessing_crop=flag_values.with_preprocessing_crop,
      jit_compile=flag_values.jit_compile,
      include_semantic_probs=flag_values.include_semantic_probs,
      tflite_output=flag_values.tflite_output)
  print(f"exported {result.checkpoint} to {result.export_dir}")
  if result.tflite_path:
    print(f"wrote {result.tflite_path}")


if __name__ == "__main__":
  cli.run(main)
