"""scripts/check_docs.py: Markdown parsing (fast) and every documented command (slow)."""
import importlib.util
import os
import re
import subprocess
import sys

import pytest

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_SCRIPT = os.path.join(_REPO, "scripts", "check_docs.py")


def _load_checker():
  spec = importlib.util.spec_from_file_location("check_docs", _SCRIPT)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


check_docs = _load_checker()

_MARKDOWN = """# Title

```bash
echo one
```

<!-- doc-check: skip (needs a TF Serving server) -->
```sh
curl http://localhost:8501
```

```text
a listing, not a command
```

```
$ no language: a listing too
```

````python title="four backticks"
print("```")
````

```console
$ ls \\
    configs
configs/coco
$ echo two
two
```
"""


def test_parse_blocks_finds_commands_with_their_skip_reasons():
  blocks = check_docs.parse_blocks(_MARKDOWN, "doc.md")
  assert [(b.line, b.language, b.skip_reason) for b in blocks] == [
      (3, "bash", ""), (8, "sh", "needs a TF Serving server"), (20, "python", ""),
      (24, "console", "")]
  assert blocks[0].code == "echo one\n"
  assert blocks[2].code == 'print("```")\n'
  assert blocks[1].where == "doc.md:8"


def test_console_commands_keep_prompted_lines_and_continuations():
  block = check_docs.parse_blocks(_MARKDOWN, "doc.md")[3]
  assert check_docs.console_commands(block.code) == "ls \\\n    configs\necho two\n"


@pytest.mark.parametrize("markdown, message", [
    ("<!-- doc-check: run please -->\n```sh\nls\n```\n", "doc.md:1: doc-check marker"),
    ("<!-- doc-check: skip (x) -->\n\n```text\nls\n```\n", "before a 'text' block"),
    ("<!-- doc-check: skip (x) -->\nprose\n```sh\nls\n```\n", "not directly before"),
    ("```sh\nls\n", "doc.md:1: fenced block never closed"),
    ("text\n<!-- doc-check: skip (x) -->\n", "doc.md:2: doc-check marker at the end"),
])
def test_parse_blocks_rejects_bad_markers(markdown, message):
  with pytest.raises(ValueError, match=message):
    check_docs.parse_blocks(markdown, "doc.md")


def test_only_the_bare_demo_command_gets_the_short_training_args(tmp_path):
  demo = check_docs.Block("README.md", 1, "bash", "bash scripts/demo.sh\nls /tmp/x\n")
  argv = check_docs.block_command(demo, str(tmp_path), "python")
  assert argv[:3] == ["bash", "-euo", "pipefail"]
  assert argv[-1] == f"{check_docs.demo_command()}\nls {tmp_path}/tmp/x"
  assert check_docs.demo_command().startswith("bash scripts/demo.sh --config_override=")


def test_checker_fails_on_an_unmarked_failing_block_and_reports_skips(tmp_path):
  doc = tmp_path / "doc.md"
  doc.write_text("```sh\nfalse\n```\n\n<!-- doc-check: skip (no server) -->\n```sh\nfalse\n```\n"
                 "\n```python\nprint('ran')\n```\n")
  result = subprocess.run(
      [sys.executable, _SCRIPT, str(doc), f"--workspace={tmp_path / 'ws'}"],
      capture_output=True, text=True, check=False, timeout=300)
  assert result.returncode == 1, result.stdout + result.stderr
  assert f"FAIL {doc}:1 (sh" in result.stdout
  assert f"ok   {doc}:10 (python" in result.stdout
  assert f"skip {doc}:6 (sh): no server" in result.stdout
  assert "1/2 documented blocks passed, 1 skipped" in result.stdout


@pytest.fixture(scope="module")
def checked_workspace(tmp_path_factory):
  """Runs the whole check once; returns (workspace, completed process)."""
  workspace = tmp_path_factory.mktemp("doc_check")
  result = subprocess.run(
      [sys.executable, _SCRIPT, f"--workspace={workspace}"], capture_output=True, text=True,
      check=False, timeout=1800)
  return workspace, result


@pytest.mark.slow
def test_every_documented_command_runs(checked_workspace):
  _, result = checked_workspace
  assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
  assert "documented blocks passed" in result.stdout


@pytest.mark.slow
def test_demo_reruns_and_reexports_over_its_pinned_version(checked_workspace):
  workspace, _ = checked_workspace
  saved_model = workspace / "demo_output" / "export" / "1" / "saved_model.pb"
  first_export = saved_model.stat().st_mtime_ns
  result = subprocess.run(
      ["bash", "-euo", "pipefail", "-c", check_docs.demo_command()], cwd=workspace,
      env=check_docs.workspace_environment(str(workspace), sys.executable),
      capture_output=True, text=True, check=False, timeout=1200)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  assert saved_model.stat().st_mtime_ns != first_export  # exported again, not refused
  assert f"All metrics: {workspace}/demo_output/model/eval_metrics.json" in result.stdout
  assert re.search(r"^step 2: PQ \d+\.\d  SQ ", result.stdout, re.M), result.stdout[-2000:]
