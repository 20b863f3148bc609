r"""Prediction on images for every task: panoptic PNGs (official formats), overlays and
segments JSON; semantic class-id and palette PNGs; classification JSON lines.

From an exported SavedModel (base or version directory):

  python trainer/predict.py --saved_model=/tmp/demo_export --input=photos/ \
      --output_dir=/tmp/predictions

or from a checkpoint with its config:

  python trainer/predict.py --config_file=configs/shapes/axial_deeplab_demo.textproto \
      --checkpoint=/tmp/demo --input='photos/*.jpg' --output_dir=/tmp/predictions

Writes under --output_dir (see deeplab_axial/predict.py): panoptic models
panoptic/<name>.png (+ panoptic.json for coco/cityscapes), overlays/<name>.png and
segments.json; semantic models semantic/<name>.png (class ids), colored/<name>.png,
overlays/<name>.png (and boundary/<name>.png for Gated-SCNN); classifiers
predictions.jsonl (top-5 classes and probabilities per image).
"""
import sys

from deeplab_axial import cli

cli.start_quietly()

from absl import flags  # noqa: E402  (after start_quietly, as everything below)

flags.DEFINE_string("saved_model", None, "Exported SavedModel (base or version directory).")
flags.DEFINE_string("config_file", None, "Config, with --checkpoint, instead of a SavedModel.")
flags.DEFINE_multi_string("config_override", [], "Config overrides (repeatable).")
flags.DEFINE_string("checkpoint", None, "Checkpoint prefix or model_dir (with --config_file).")
flags.DEFINE_multi_string("input", None, "Image file, folder or glob pattern (repeatable).")
flags.DEFINE_string("output_dir", None, "Output folder.")
flags.DEFINE_string("dataset", None, "Dataset descriptor name (class names, colours, "
                    "official ids); default: the export's or the config's.")
flags.DEFINE_enum("output_format", "generic", ["generic", "coco", "cityscapes"],
                  "Panoptic PNG format (panoptic models only).")
flags.DEFINE_integer("batch_size", 1, "Images per model call (equal-size neighbours).")
flags.DEFINE_float("overlay_alpha", 0.5, "Colour weight of the overlays.")
flags.DEFINE_bool("skip_unreadable", False, "Skip unreadable images instead of failing.")
flags.mark_flags_as_required(["input", "output_dir"])


def _predictor(flag_values):
  """(predictor, dataset_info or None) from the flags."""
  # pylint: disable=import-outside-toplevel
  from deeplab_axial import predict
  from deeplab_axial.data import datasets
  if bool(flag_values.saved_model) == bool(flag_values.config_file):
    raise ValueError("pass exactly one of --saved_model and --config_file (+ --checkpoint)")
  if flag_values.saved_model:
    cli.say(f"loading {flag_values.saved_model}...")
    predictor = predict.SavedModelPredictor(flag_values.saved_model)
    info = (datasets.get_dataset_info(flag_values.dataset) if flag_values.dataset
            else predictor.dataset_info())
    return predictor, info
  if not flag_values.checkpoint:
    raise ValueError("--config_file needs --checkpoint")
  from deeplab_axial import config as config_lib
  from deeplab_axial.export import from_config
  config = config_lib.load_config(flag_values.config_file, flag_values.config_override)
  info = (datasets.get_dataset_info(flag_values.dataset) if flag_values.dataset
          else datasets.dataset_info_from_config(config.dataset))
  cli.say(f"building the model and restoring {flag_values.checkpoint}...")
  restored = from_config.restore_from_config(config, flag_values.checkpoint,
                                             dataset_info=info)
  return predict.KerasPredictor(restored.model, restored.serving_options,
                                restored.task), info


def main(argv):
  del argv
  from deeplab_axial import predict  # pylint: disable=import-outside-toplevel
  flag_values = flags.FLAGS
  predictor, info = _predictor(flag_values)
  summary = predict.predict_images(
      predictor, flag_values.input, flag_values.output_dir, dataset_info=info,
      output_format=flag_values.output_format, batch_size=flag_values.batch_size,
      overlay_alpha=flag_values.overlay_alpha,
      skip_unreadable=flag_values.skip_unreadable)
  print(f"wrote {summary['num_images']} predictions to {flag_values.output_dir}")
  for path in summary["skipped"]:
    print(f"skipped unreadable image {path}", file=sys.stderr)


if __name__ == "__main__":
  cli.run(main)
