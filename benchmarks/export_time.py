r"""Export time: our SavedModel export vs `tf.saved_model.save` with TF's defaults.

  python benchmarks/export_time.py [--config=configs/shapes/axial_deeplab_demo.textproto]
                                   [--rounds=2]

Both variants save the same serving module (the config's model, random weights, both
signatures) and run in a fresh process each (tracing caches and lazy imports would
otherwise favour the second), alternated `--rounds` times; the best of each is kept:
* baseline: `tf.saved_model.save(module, dir, signatures=module.signatures())`, TF's
  default `SaveOptions` (which trace and store the gradient of every custom-gradient op)
  with the signatures traced before the save (which traces them again in its context);
* ours: `deeplab_axial.export.export_saved_model` (what `trainer/export.py` runs).
Both use the same serving module, so what it does itself (holding the shared inference
function in a closure, not as an attribute the save would trace again) is in both.
Prints the seconds of each (model build excluded) and the ratio ours / baseline.
"""
import argparse
import os
import tempfile
import time

import fresh_processes  # benchmarks/, the script's own directory

def _export_once(config_path, variant, output_dir):
  """Builds the config's model and exports it with `variant`; returns the export's
  seconds."""
  os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  from deeplab_axial import config as config_lib  # pylint: disable=import-outside-toplevel
  from deeplab_axial import tasks  # pylint: disable=import-outside-toplevel
  from deeplab_axial.data import datasets  # pylint: disable=import-outside-toplevel
  from deeplab_axial.export import saved_model  # pylint: disable=import-outside-toplevel
  config = config_lib.load_config(config_path)
  info = datasets.dataset_info_from_config(config.dataset)
  task = tasks.create_task(config, info)
  model = task.build_model()
  options = saved_model.serving_options_from_config(config, info)
  start = time.perf_counter()
  if variant == "baseline":
    module = task.serving_module(model, options)
    tf.saved_model.save(module, output_dir, signatures=module.signatures())
  else:
    saved_model.export_saved_model(model, output_dir, version=1, serving=options,
                                   task=task, dataset_info=info)
  return time.perf_counter() - start


def main():
  parser = fresh_processes.argument_parser(__doc__.split("\n")[0])
  parser.add_argument("--output_dir", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    # Each child writes to a directory of its own under the parent's temporary one.
    output_dir = os.path.join(args.output_dir, f"{args.child}_{os.getpid()}")
    print(f"{_export_once(args.config, args.child, output_dir):.2f}")
    return
  with tempfile.TemporaryDirectory() as output_dir:
    fresh_processes.compare(os.path.abspath(__file__),
                            [f"--config={args.config}", f"--output_dir={output_dir}"],
                            args.config, args.rounds)

if __name__ == "__main__":
  main()
