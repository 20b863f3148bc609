r"""Prints the last evaluation recorded in a model directory, as percentages.

  python trainer/show_metrics.py --model_dir=demo_output/model

reads `<model_dir>/eval_metrics.json` (written by trainer/train.py) and prints e.g.
`step 1000: PQ 61.9  SQ 77.6  RQ 80.0  PQ_th 62.8  PQ_st 61.1  mIoU 82.1`.
"""
from deeplab_axial import cli

cli.start_quietly()

from absl import flags  # noqa: E402  (after start_quietly, as everything below)

flags.DEFINE_string("model_dir", None, "The trainer's --model_dir.")
flags.mark_flags_as_required(["model_dir"])


def main(argv):
  del argv
  from deeplab_axial.metrics import report  # pylint: disable=import-outside-toplevel
  step, metrics = report.latest_metrics(flags.FLAGS.model_dir)
  print(f"step {step}: {report.summary(metrics)}")


if __name__ == "__main__":
  cli.run(main)
