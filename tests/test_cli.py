"""Every CLI in trainer/ and data/ turns bad input into one `error: ...` line and status 2.

Each case runs the real script in a subprocess (a few seconds each: TensorFlow loads, no
model is trained), with the default environment of a user: no TF_CPP_MIN_LOG_LEVEL, so
the test also checks that TensorFlow's start-up lines are hidden.
"""
import os
import subprocess
import sys

import pytest

from deeplab_axial import cli
from tests.data import data_fixtures

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_DEMO_CONFIG = os.path.join(_REPO, "configs", "shapes", "axial_deeplab_demo.textproto")


def _run(script, *args, verbose=False):
  env = {k: v for k, v in os.environ.items()
         if k not in ("TF_CPP_MIN_LOG_LEVEL", cli.VERBOSE_ENV)}
  env["PYTHONPATH"] = os.pathsep.join([_REPO, env.get("PYTHONPATH", "")])
  command = [sys.executable, os.path.join(_REPO, script), *args]
  if verbose:
    command.append("--verbose")
  return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300,
                        check=False)


def _assert_one_error_line(completed, *fragments):
  """stderr is exactly one `error: ` line holding every fragment; the exit status is 2."""
  lines = completed.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), completed.stderr[-3000:]
  for fragment in fragments:
    assert fragment in lines[0]
  assert completed.returncode == cli.EXIT_USER_ERROR


def _corrupt_coco(root):
  data_fixtures.make_coco(str(root), split="val", num_images=2)
  path = root / "annotations" / "panoptic_val2017" / "000000001001.png"
  path.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
  return str(path)


@pytest.mark.parametrize("script", ["data/build_coco_data.py", "data/build_cityscapes_data.py",
                                    "data/build_mapillary_data.py",
                                    "data/build_imagenet_data.py"])
def test_converter_missing_input_dir(script, tmp_path):
  missing = str(tmp_path / "no_such_dataset")
  completed = _run(script, f"--input_dir={missing}", f"--output_dir={tmp_path / 'out'}")
  _assert_one_error_line(completed, missing)


def test_converter_corrupt_png_is_one_line(tmp_path):
  broken = _corrupt_coco(tmp_path / "coco")
  completed = _run("data/build_coco_data.py", f"--input_dir={tmp_path / 'coco'}",
                   f"--output_dir={tmp_path / 'out'}", "--split=val", "--num_shards=1")
  _assert_one_error_line(completed, broken, "corrupt")


def test_verbose_shows_the_traceback(tmp_path):
  broken = _corrupt_coco(tmp_path / "coco")
  completed = _run("data/build_coco_data.py", f"--input_dir={tmp_path / 'coco'}",
                   f"--output_dir={tmp_path / 'out'}", "--split=val", "--num_shards=1",
                   verbose=True)
  assert completed.returncode == cli.EXIT_USER_ERROR
  assert "Traceback (most recent call last)" in completed.stderr
  assert "ConversionError" in completed.stderr
  last = completed.stderr.strip().splitlines()[-1]
  assert last.startswith("error: ") and broken in last


def test_missing_required_flag_is_one_line(tmp_path):
  completed = _run("data/build_coco_data.py", f"--output_dir={tmp_path}")
  _assert_one_error_line(completed, "--input_dir")


def test_train_unknown_config_field(tmp_path):
  config = tmp_path / "bad.textproto"
  config.write_text('dataset { name: "shapes" }\nmodel { no_such_field: 3 }\n')
  completed = _run("trainer/train.py", f"--config_file={config}",
                   f"--model_dir={tmp_path / 'model'}")
  _assert_one_error_line(completed, "no_such_field", str(config))


def test_train_bad_override_syntax(tmp_path):
  completed = _run("trainer/train.py", f"--config_file={_DEMO_CONFIG}",
                   f"--model_dir={tmp_path / 'model'}", "--config_override=train.steps 5")
  _assert_one_error_line(completed, "--config_override", "train.steps 5")


def test_train_missing_config_file(tmp_path):
  missing = str(tmp_path / "missing.textproto")
  completed = _run("trainer/train.py", f"--config_file={missing}",
                   f"--model_dir={tmp_path / 'model'}")
  _assert_one_error_line(completed, missing)


def test_export_missing_checkpoint(tmp_path):
  missing = str(tmp_path / "no_such_model_dir")
  completed = _run("trainer/export.py", f"--config_file={_DEMO_CONFIG}",
                   f"--checkpoint={missing}", f"--output_dir={tmp_path / 'export'}")
  _assert_one_error_line(completed, missing)


def test_predict_missing_saved_model(tmp_path):
  missing = str(tmp_path / "no_such_export")
  completed = _run("trainer/predict.py", f"--saved_model={missing}",
                   f"--input={tmp_path}", f"--output_dir={tmp_path / 'out'}")
  _assert_one_error_line(completed, missing)


def test_predict_missing_checkpoint(tmp_path):
  missing = str(tmp_path / "no_such_model_dir")
  completed = _run("trainer/predict.py", f"--config_file={_DEMO_CONFIG}",
                   f"--checkpoint={missing}", f"--input={tmp_path}",
                   f"--output_dir={tmp_path / 'out'}")
  _assert_one_error_line(completed, missing)


def test_convert_torch_weights_missing_input(tmp_path):
  missing = str(tmp_path / "axial26s.npz")
  completed = _run("trainer/convert_torch_weights.py", f"--input={missing}",
                   f"--output={tmp_path / 'ckpt'}", "--name=axial26s")
  _assert_one_error_line(completed, missing)


@pytest.mark.parametrize("script, flag", [("data/build_coco_data.py", "--input_dir"),
                                          ("data/build_shapes_data.py", "--image_size"),
                                          ("trainer/train.py", "--config_file"),
                                          ("trainer/predict.py", "--saved_model")])
def test_help_lists_own_flags_and_keeps_example_lines(script, flag):
  completed = _run(script, "--help")  # absl exits with status 1 after printing the help
  assert f"  {flag}:" in completed.stdout
  assert "  --[no]verbose:" in completed.stdout
  with open(os.path.join(_REPO, script), encoding="utf-8") as f:
    example = [line for line in f.read().splitlines() if line.startswith("  python ")][0]
  assert example in completed.stdout.splitlines(), completed.stdout  # not joined with the next
  assert completed.stderr == ""
