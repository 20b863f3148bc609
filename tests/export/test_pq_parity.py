"""The exported model scores the same PQ on the demo val split as the trainer's evaluator.

The demo experiment (configs/shapes/axial_deeplab_demo.textproto) is trained briefly with
the trainer, evaluated by it (eval_metrics.json), exported by the same code as
trainer/export.py (dynamic and static-size variants), and both signatures are run on the
*unpadded* val images in a process that can import only TensorFlow. PQ, SQ, RQ and the
per-class numbers of those outputs must equal the evaluator's.
"""
import os
import subprocess
import sys

import numpy as np
import pytest

from deeplab_axial import config as config_lib
from deeplab_axial import metrics
from deeplab_axial.data import datasets
from deeplab_axial.export import from_config
from deeplab_axial.training import experiment

from tests.export import export_fixtures

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_DEMO_CONFIG = os.path.join(_REPO, "configs", "shapes", "axial_deeplab_demo.textproto")
# Brief training that still segments: the demo recipe at 10x its learning rate (0.01,
# 10 warmup steps) with BN momentum 0.9, 150 steps at batch 8 (see the PQ assertion).
_TRAIN_STEPS = 150


def _panoptic_quality(info, labels, predictions):
  pq = metrics.PanopticQuality(num_classes=info.num_classes, ignore_label=info.ignore_label,
                               label_divisor=info.label_divisor,
                               thing_classes=info.thing_class_ids)
  for label, prediction in zip(labels, predictions):
    pq.update_state(label[None], prediction[None])
  return pq.result()


@pytest.fixture(scope="module")
def trained_demo(tmp_path_factory):
  """(config, model_dir, data_dir, evaluator metrics) of a briefly trained demo."""
  root = tmp_path_factory.mktemp("demo")
  model_dir, data_dir = str(root / "model"), str(root / "data")
  config = config_lib.load_config(_DEMO_CONFIG, [
      f"train.steps: {_TRAIN_STEPS}", f"train.checkpoint_interval: {_TRAIN_STEPS}",
      "train.steps_per_loop: 50", f"eval.interval: {_TRAIN_STEPS}",
      "solver.learning_rate: 0.01", "solver.warmup_steps: 10",
      "model.batch_norm_momentum: 0.9"])
  experiment.run_experiment(config, "train", model_dir, data_dir=data_dir)
  experiment.run_experiment(config, "eval", model_dir, data_dir=data_dir)
  evaluated = experiment.read_metrics(os.path.join(model_dir, experiment.METRICS_FILE))
  return config, model_dir, data_dir, evaluated[str(_TRAIN_STEPS)]


@pytest.mark.slow
@pytest.mark.parametrize("static", [False, True], ids=["dynamic", "static_eval_crop"])
def test_exported_model_pq_on_demo_val_split_equals_evaluator(trained_demo, tmp_path,
                                                              static):
  config, model_dir, data_dir, evaluated = trained_demo
  info = datasets.get_dataset_info("shapes")
  result = from_config.export_from_config(config, model_dir, str(tmp_path / "export"),
                                          with_preprocessing_crop=static)
  pattern = config_lib.resolve_file_pattern(config.dataset.eval_file_pattern[0], data_dir)
  images, encoded, labels = export_fixtures.val_split(pattern)
  assert len(images) == 50
  outputs = export_fixtures.run_signatures_in_plain_tf(
      result.export_dir, [np.stack(batch) for batch in export_fixtures.batches(images, 16)],
      export_fixtures.batches(encoded, 16), str(tmp_path))
  for signature in ("default", "bytes"):
    predictions = np.concatenate([outputs[f"{signature}/{b}/panoptic"]
                                  for b in range(len(export_fixtures.batches(images, 16)))])
    assert predictions.shape == (50, 64, 64)
    exported = _panoptic_quality(info, labels, predictions)
    for key in ("pq", "sq", "rq", "pq_th", "pq_st"):
      assert float(exported[key]) == pytest.approx(evaluated[key], abs=1e-9), (signature,
                                                                               key)
  # Equality is only telling if the model segments something: PQ well above zero (0.29,
  # things 0.29, stuff 0.29 measured after the 150 steps; the learning rate 0.001 of the
  # demo needed 400 steps for 0.13), with true positives among both things and stuff.
  assert evaluated["pq"] > 0.1, evaluated
  assert evaluated["pq_th"] > 0 and evaluated["pq_st"] > 0, evaluated


@pytest.mark.slow
def test_export_cli_writes_the_requested_version_and_reports_bad_checkpoints(trained_demo,
                                                                             tmp_path):
  model_dir = trained_demo[1]
  script = os.path.join(_REPO, "trainer", "export.py")
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  output_dir = str(tmp_path / "served")
  completed = subprocess.run(
      [sys.executable, script, f"--config_file={_DEMO_CONFIG}", f"--checkpoint={model_dir}",
       f"--output_dir={output_dir}", "--version=7"],
      env=env, capture_output=True, text=True, timeout=600, check=False)
  assert completed.returncode == 0, completed.stderr[-3000:]
  assert f"to {os.path.join(output_dir, '7')}" in completed.stdout
  assert os.path.isfile(os.path.join(output_dir, "7", "saved_model.pb"))
  missing = str(tmp_path / "no_such_model_dir")
  completed = subprocess.run(
      [sys.executable, script, f"--config_file={_DEMO_CONFIG}", f"--checkpoint={missing}",
       f"--output_dir={output_dir}"],
      env=env, capture_output=True, text=True, timeout=600, check=False)
  assert completed.returncode == 2
  assert completed.stderr.strip().splitlines()[-1].startswith("error: ")
  assert missing in completed.stderr
