r"""Model build time: Keras' scratch-graph traces vs `graph_code`'s shortcuts.

  python benchmarks/build_time.py [--config=configs/shapes/axial_deeplab_demo.textproto]
                                  [--rounds=2]

Builds the config's task model (the backbone, then the model around it) in a fresh
process per variant (lazy imports and caches would otherwise favour the second),
alternated `--rounds` times; the best of each is kept:
* baseline: Keras' default, with `graph_code.call_nested` calling the backbone plainly
  and `OutputSpecFromShape` layers tracing their `call` (the mixin's method replaced by
  `tf_keras.layers.Layer`'s);
* ours: the library as it is.
Prints the seconds of each (imports excluded) and the ratio ours / baseline.
"""
import os
import time

import fresh_processes  # benchmarks/, the script's own directory

def _build_once(config_path, variant):
  """Builds the config's model with `variant`; returns the build's seconds."""
  os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  import tf_keras  # pylint: disable=import-outside-toplevel
  from deeplab_axial import config as config_lib  # pylint: disable=import-outside-toplevel
  from deeplab_axial import tasks  # pylint: disable=import-outside-toplevel
  from deeplab_axial.data import datasets  # pylint: disable=import-outside-toplevel
  from deeplab_axial.layers import graph_code  # pylint: disable=import-outside-toplevel
  if variant == "baseline":
    graph_code.call_nested = lambda model, inputs: model(inputs)
    graph_code.OutputSpecFromShape._infer_output_signature = (  # pylint: disable=protected-access
        tf_keras.layers.Layer._infer_output_signature)  # pylint: disable=protected-access
  config = config_lib.load_config(config_path)
  task = tasks.create_task(config, datasets.dataset_info_from_config(config.dataset))
  start = time.perf_counter()
  task.build_model()
  return time.perf_counter() - start


def main():
  args = fresh_processes.argument_parser(__doc__.split("\n")[0]).parse_args()
  if args.child:
    print(f"{_build_once(args.config, args.child):.2f}")
    return
  fresh_processes.compare(os.path.abspath(__file__), [f"--config={args.config}"],
                          args.config, args.rounds)

if __name__ == "__main__":
  main()
