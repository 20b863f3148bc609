"""Evaluation results as people read them: `eval_metrics.json` and a percentage summary.

The trainer records every evaluation in `model_dir/eval_metrics.json` as
`{"<step>": {"pq": 0.619, ...}}` (fractions, as everywhere in code); reports show them as
percentages with one decimal, as the papers and the README do.
"""
import json
import os
from typing import Dict, Mapping, Tuple

METRICS_FILE = "eval_metrics.json"

# Display order and labels of the scalar metrics a summary shows (others are left out).
_LABELS = (("pq", "PQ"), ("sq", "SQ"), ("rq", "RQ"), ("pq_th", "PQ_th"), ("pq_st", "PQ_st"),
           ("miou", "mIoU"), ("ap", "AP"), ("boundary_f_score", "boundary F"), ("top1", "top-1"),
           ("top5", "top-5"))


def read_metrics(path: str) -> Dict[str, dict]:
  """The {step: metrics} dict of an `eval_metrics.json`, or {} when it does not exist."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel  (gfile: any filesystem)
  if not tf.io.gfile.exists(path):
    return {}
  with tf.io.gfile.GFile(path) as f:
    return json.load(f)


def latest_metrics(model_dir: str) -> Tuple[int, dict]:
  """(step, metrics) of the last evaluation recorded in `model_dir`.

  Raises:
    FileNotFoundError: `model_dir` has no `eval_metrics.json` with an evaluation in it.
  """
  path = os.path.join(model_dir, METRICS_FILE)
  recorded = read_metrics(path)
  if not recorded:
    raise FileNotFoundError(f"{path} does not exist or holds no evaluation; run "
                            f"trainer/train.py with --mode=eval or train_and_eval first")
  step = max(recorded, key=int)
  return int(step), recorded[step]


def summary(metrics: Mapping[str, float]) -> str:
  """One line of the known scalar metrics as percentages, e.g. `PQ 61.9  SQ 77.6  ...`."""
  return "  ".join(f"{label} {100 * float(metrics[key]):.1f}" for key, label in _LABELS
                   if key in metrics)


__all__ = ["METRICS_FILE", "latest_metrics", "read_metrics", "summary"]
