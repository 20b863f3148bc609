"""`--mode=rehearse` (deeplab_axial.training.rehearsal) on the shipped configs.

What runs where (CI time is scarce; see README "Rehearsal"):

* CI (`scripts/test.sh`): the demo configs of `configs/shapes/` (every head and both
  segmentation tasks) and the smallest ImageNet config, traced at their real shapes (the
  axial demo also runs its training step, in its own test); the failure cases.
* Every shipped config at its real shapes (L/XL at 1025x2049 included): the
  `full_rehearsal` marker, not in CI, run with
  `python -m pytest -m full_rehearsal tests/training/test_rehearsal.py` or one config at a
  time with `python trainer/train.py --mode=rehearse --config_file=...`.
"""
import glob
import os
import re
import subprocess
import sys

import pytest
import tensorflow as tf

from deeplab_axial import config as config_lib
from deeplab_axial import tasks
from deeplab_axial.data import datasets
from deeplab_axial.training import rehearsal

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHIPPED_CONFIGS = sorted(
    os.path.relpath(p, REPO)
    for p in glob.glob(os.path.join(REPO, "configs", "**", "*.textproto"), recursive=True))
# Small enough to trace in CI (tiny models, small crops).
CI_CONFIGS = [p for p in SHIPPED_CONFIGS if p.startswith("configs/shapes/")] + [
    "configs/imagenet/axial_resnet_s_conv_stem.textproto"]
DEMO = "configs/shapes/axial_deeplab_demo.textproto"
def _load(path, overrides=()):
  return config_lib.load_config(os.path.join(REPO, path), overrides)


def _check_rehearsal(path, tmp_path, **kwargs):
  """Rehearses a shipped config without data: train, eval, export and the unread-field
  check all pass."""
  report = rehearsal.rehearse(_load(path), data_dir=str(tmp_path / "no_data"), **kwargs)
  assert report.problems == []
  return report


@pytest.mark.slow
# The demo is rehearsed in full (its step run) by
# test_demo_runs_its_step_counts_multiply_adds_and_names_a_mismatched_checkpoint_variable.
@pytest.mark.parametrize("path", [p for p in CI_CONFIGS if p != DEMO])
def test_small_shipped_configs_trace_at_their_real_shapes(path, tmp_path):
  report = _check_rehearsal(path, tmp_path, run_step=False, count_multiply_adds=False)
  config = _load(path)
  crop = list(config.dataset.crop_size)
  assert report.traced[0] == (f"train step at [{config.train.batch_size}, {crop[0]}, "
                              f"{crop[1]}, 3]")
  assert any(t.startswith("export signatures") for t in report.traced)


@pytest.mark.full_rehearsal
@pytest.mark.parametrize("path", SHIPPED_CONFIGS)
def test_every_shipped_config_rehearses_at_its_real_shapes(path, tmp_path):
  _check_rehearsal(path, tmp_path)


def _run_cli(tmp_path, *flags):
  env = dict(os.environ, PYTHONPATH=REPO, DEEPLAB_AXIAL_VERBOSE="0")
  env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # conftest's; the CLI chooses its own
  return subprocess.run(
      [sys.executable, os.path.join(REPO, "trainer", "train.py"), "--mode=rehearse",
       f"--config_file={os.path.join(REPO, DEMO)}", f"--data_dir={tmp_path}", *flags],
      capture_output=True, text=True, env=env, cwd=str(tmp_path), check=False)


def _one_error_line(result):
  assert result.returncode == 2, result.stderr[-3000:]
  assert "Traceback" not in result.stderr
  error_lines = [line for line in result.stderr.splitlines() if line.strip()]
  assert len(error_lines) == 1 and error_lines[0].startswith("error: "), result.stderr
  return error_lines[0]


def test_global_span_with_an_eval_crop_beyond_its_table_fails_naming_the_span(tmp_path):
  # The demo's global attention (at most 255 positions) at stride 4 sees 1025 / 4 > 255;
  # the config is refused when loaded, before anything is built.
  line = _one_error_line(_run_cli(tmp_path, "--config_override=eval.crop_size: [1025, 1025]"))
  assert "model.backbone.span = 0" in line and "eval.crop_size [1025, 1025]" in line, line


def test_rehearsal_names_the_span_when_a_global_axis_is_too_long(tmp_path):
  # Past the load-time check (changed after loading): the model build (or, failing that,
  # the eval trace) catches it, on one line naming the span and the crop.
  config = _load(DEMO)
  config.eval.crop_size[:] = [1025, 1025]
  with pytest.raises((ValueError, rehearsal.RehearsalError)) as raised:
    rehearsal.rehearse(config, data_dir=str(tmp_path), run_step=False,
                       count_multiply_adds=False)
  message = str(raised.value)
  assert "\n" not in message
  assert "model.backbone.span" in message and "eval.crop_size" in message, message
  assert "dataset.crop_size" not in message  # training at 65x65 is fine


def test_problem_line_of_a_traced_global_axis_names_span_and_crop():
  # The line a trace-time failure of the layer (axial_attention's message) becomes.
  error = ValueError(
      'Exception encountered when calling layer "height_attention".\n\nThe height axis '
      "has length 257, longer than `max_global_length` (255) of this global-span layer; "
      "build the layer with a larger `max_global_length` or use a local `span`.\n\n"
      "Call arguments received by layer:\n  inputs=tf.Tensor(shape=(1, 257, 257, 64))")
  line = rehearsal._problem_line(  # pylint: disable=protected-access
      "eval step", ["eval.crop_size", "eval.scales", "eval.batch_size"], error)
  assert line == (
      "eval step: model.backbone.span: 0 (global attention) cannot run at this crop: The "
      "height axis has length 257, longer than `max_global_length` (255) of this "
      "global-span layer; build the layer with a larger `max_global_length` or use a "
      "local `span`. Set model.backbone.span (e.g. 65) or a smaller crop (eval.crop_size, "
      "eval.scales)")


def _write_demo_checkpoint(directory, width_multiplier):
  """A checkpoint of the demo model at another width, saved as the trainer saves."""
  config = _load(DEMO, [f"model.backbone.width_multiplier: {width_multiplier}"])
  info = datasets.dataset_info_from_config(config.dataset)
  model = tasks.create_task(config, info).build_model()
  model(tf.zeros([1, 65, 65, 3]), training=False)
  return tf.train.Checkpoint(model=model).write(os.path.join(directory, "ckpt-1"))


@pytest.mark.slow
def test_demo_runs_its_step_counts_multiply_adds_and_names_a_mismatched_checkpoint_variable(
    tmp_path):
  # One rehearsal checks every stage of the demo: a failed stage (here the initial
  # checkpoint) is reported and the later stages still run, so the one run covers both.
  prefix = _write_demo_checkpoint(str(tmp_path), 0.5)
  config = _load(DEMO, [f"train.initial_checkpoint: '{prefix}'"])
  reports, printed = [], []
  with pytest.raises(rehearsal.RehearsalError) as raised:
    rehearsal.rehearse(config, data_dir=str(tmp_path / "no_data"), run_step=True,
                       on_finish=reports.append, log_fn=printed.append)
  report = reports[0]
  assert report.ran == ["train step at [8, 65, 65, 3]"]
  assert any(t.startswith("export signatures") for t in report.traced)
  assert report.eval_crop == (65, 65)
  # The model's own count at the eval crop (models.count_multiply_adds), independently
  # of the rehearsal's model.
  assert report.multiply_adds > 0
  assert report.parameters > 0
  assert report.estimated_memory_bytes > 4 * 4 * report.parameters
  assert printed[-1] == "rehearsal: FAILED"
  # The CLI prints a RehearsalError as one `error:` line, like any user error
  # (tests/test_cli.py): the line names the variable of the half-width checkpoint and
  # both shapes.
  line = str(raised.value)
  assert "\n" not in line and "initial checkpoint" in line
  assert re.search(r"model/\S+: checkpoint \[128\] vs model \[64\]", line), line
  assert len(report.problems) == 1, report.problems
