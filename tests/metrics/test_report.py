"""eval_metrics.json reading and the percentage summary the demo prints."""
import json

import pytest

from deeplab_axial.metrics import report


def test_summary_shows_known_metrics_as_percentages_in_order():
  line = report.summary({"miou": 0.8291, "pq": 0.61927, "sq": 0.8, "per_class_pq": [1, 2],
                         "rq": 0.7756, "unknown": 0.5})
  assert line == "PQ 61.9  SQ 80.0  RQ 77.6  mIoU 82.9"


def test_latest_metrics_is_the_highest_step_not_the_last_written(tmp_path):
  with open(tmp_path / report.METRICS_FILE, "w") as f:
    json.dump({"1000": {"pq": 0.6}, "500": {"pq": 0.3}}, f)
  assert report.latest_metrics(str(tmp_path)) == (1000, {"pq": 0.6})


def test_latest_metrics_names_the_missing_file(tmp_path):
  with pytest.raises(FileNotFoundError, match="eval_metrics.json does not exist"):
    report.latest_metrics(str(tmp_path))
