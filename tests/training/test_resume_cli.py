"""Kill-and-resume through the real CLI (trainer/train.py) on a shrunken shapes demo."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import tensorflow as tf

from deeplab_axial import checkpoints
from deeplab_axial.training import experiment

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_CONFIG = os.path.join(_REPO, "configs", "shapes", "axial_deeplab_demo.textproto")
_TOTAL_STEPS = 16
_RUN_TIMEOUT_S = 400
# The demo, shrunk so that a step takes well under a second on a loaded 2-core CPU.
_OVERRIDES = (
    f"train.steps: {_TOTAL_STEPS}",
    "train.checkpoint_interval: 4",
    "train.steps_per_loop: 2",
    "train.summary_interval: 2",
    "train.batch_size: 2",
    "solver.warmup_steps: 2",
    "model.backbone.width_multiplier: 0.125",
    "dataset.crop_size: [33, 33]",
    f"eval.interval: {_TOTAL_STEPS}",
    "eval.steps: 1",
    "eval.batch_size: 2",
)


def _command(model_dir):
  # The real CLI, without Grappler's rewrites (tests/run_without_graph_optimizations.py).
  return ([sys.executable, os.path.join(_REPO, "tests", "run_without_graph_optimizations.py"),
           os.path.join(_REPO, "trainer", "train.py"),
           f"--config_file={_CONFIG}", "--mode=train_and_eval", f"--model_dir={model_dir}"]
          + [f"--config_override={o}" for o in _OVERRIDES])


def _environment(data_dir):
  return dict(os.environ, DEEPLAB_AXIAL_DATA_DIR=str(data_dir), TF_CPP_MIN_LOG_LEVEL="2",
              TF_USE_LEGACY_KERAS="1")


def _run(model_dir, data_dir):
  result = subprocess.run(_command(model_dir), env=_environment(data_dir),
                          capture_output=True, text=True, timeout=_RUN_TIMEOUT_S,
                          check=False)
  assert result.returncode == 0, result.stderr[-4000:]
  return result.stdout + result.stderr


def _run_until_first_checkpoint_then_kill(model_dir, data_dir, log_path):
  """Starts training, SIGKILLs it once a checkpoint exists; returns that checkpoint."""
  # The log goes to a file: a pipe nobody reads while polling could fill up and block.
  with open(log_path, "w") as log:
    process = subprocess.Popen(_command(model_dir), env=_environment(data_dir),
                               stdout=log, stderr=subprocess.STDOUT)
  deadline = time.monotonic() + _RUN_TIMEOUT_S
  try:
    while tf.train.latest_checkpoint(str(model_dir)) is None:
      if process.poll() is not None:
        pytest.fail(f"training exited ({process.returncode}) before its first checkpoint:"
                    f"\n{log_path.read_text()[-4000:]}")
      if time.monotonic() > deadline:
        pytest.fail(f"no checkpoint in {model_dir} after {_RUN_TIMEOUT_S} s")
      time.sleep(0.1)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
  finally:
    if process.poll() is None:
      process.kill()
      process.wait()
  assert process.returncode == -signal.SIGKILL
  return tf.train.latest_checkpoint(str(model_dir))


@pytest.mark.slow
def test_killed_run_resumes_from_its_checkpoint_and_finished_run_exits(tmp_path):
  model_dir, data_dir = tmp_path / "model", tmp_path / "data"
  saved = _run_until_first_checkpoint_then_kill(model_dir, data_dir, tmp_path / "killed.log")
  saved_step = checkpoints.step_of(saved)
  assert 0 < saved_step < _TOTAL_STEPS, "the run finished before it could be killed"

  log = _run(model_dir, data_dir)
  assert f"Resumed from {saved} at step {saved_step}." in log
  assert f"step {_TOTAL_STEPS}/{_TOTAL_STEPS}" in log
  # Training continued from the checkpoint: no step at or before it was run again.
  assert f"step {saved_step}/{_TOTAL_STEPS}" not in log
  assert tf.train.latest_checkpoint(str(model_dir)).endswith(f"ckpt-{_TOTAL_STEPS}")
  with open(model_dir / experiment.METRICS_FILE) as f:
    metrics = json.load(f)
  assert list(metrics) == [str(_TOTAL_STEPS)]
  assert 0.0 <= metrics[str(_TOTAL_STEPS)]["pq"] <= 1.0

  checkpoint_files = sorted(os.listdir(model_dir))
  log = _run(model_dir, data_dir)
  assert f"Training already finished at step {_TOTAL_STEPS}" in log
  assert f"/{_TOTAL_STEPS} (" not in log  # No progress line: nothing was trained.
  assert sorted(os.listdir(model_dir)) == checkpoint_files
  with open(model_dir / experiment.METRICS_FILE) as f:
    assert json.load(f) == metrics
