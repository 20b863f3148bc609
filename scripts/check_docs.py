"""Runs every command documented in README.md and docs/*.md.

  python scripts/check_docs.py [--workspace=DIR] [--python=PY] [FILE.md ...]

Every fenced `sh`/`bash`/`console` block runs in bash (`set -euo pipefail`; a `console`
block's `$ ` prompts are stripped and its output lines dropped) and every `python` block
runs in a subprocess of --python (default: this interpreter), one after the other in
document order (README.md first), so a block may use what an earlier one wrote. Blocks in
other languages (`text`, `json`, none) are listings, not commands, and are left alone.

A block that cannot run here carries, on the line before its fence, the marker

  <!-- doc-check: skip (why: e.g. needs a TF Serving server) -->

Any block that fails and is not marked makes the check fail (exit 1); the report lists
what ran, what failed (with the tail of its output) and what was skipped and why. A
malformed marker or fence, or an unreadable file, exits 2 with one line naming it.

The blocks run in a fresh workspace directory (their working directory), laid out so the
documented paths exist without editing the commands:
  configs/ data/ scripts/ trainer/    symlinks to this checkout (imported via PYTHONPATH)
  venv/bin/python                     DEEPLAB_AXIAL_VENV for scripts/demo.sh: this
                                      interpreter, with `-m pip ...` a no-op (the checkout
                                      is already importable; the check installs nothing)
  demo_output/                        DEMO_OUTPUT: the README's `bash scripts/demo.sh`
                                      writes the demo model and export here
  tmp/demo -> demo_output/model       the model directory docs/ call /tmp/demo
  ROOT -> demo_output/data/shapes/raw a dataset in COCO panoptic layout (docs/data.md)
  photos/*.jpg                        two small images to predict on
Absolute `/tmp/` paths in the blocks are rewritten to `<workspace>/tmp/`, the one
substitution. `bash scripts/demo.sh` gets DEMO_ARGS appended (a few steps at batch 2
instead of the 1000-step recipe), the one change of a command.
"""
import argparse
import dataclasses
import glob
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC_FILES = ["README.md"] + sorted(
    os.path.relpath(path, REPO) for path in glob.glob(os.path.join(REPO, "docs", "*.md")))
COMMAND_LANGUAGES = ("sh", "bash", "console", "python")
REPO_DIRS_IN_WORKSPACE = ("configs", "data", "scripts", "trainer")
DEMO_COMMAND = "bash scripts/demo.sh"
# Just enough training to produce a checkpoint, an evaluation and an export quickly.
DEMO_ARGS = ("--config_override='train.steps: 2'", "--config_override='train.batch_size: 2'",
             "--config_override='train.steps_per_loop: 1'",
             "--config_override='train.checkpoint_interval: 2'",
             "--config_override='eval.interval: 2'",
             "--config_override='solver.warmup_steps: 0'")
OUTPUT_TAIL_CHARS = 3000

_FENCE = re.compile(r"^(`{3,})\s*([\w+-]*)")  # the language is the info string's first word
_MARKER = re.compile(r"^<!--\s*doc-check:\s*(.*?)\s*-->$")
_SKIP = re.compile(r"^skip\s+\((.+)\)$")


@dataclasses.dataclass(frozen=True)
class Block:
  """One fenced code block: where it is, its language, its text and its skip reason."""
  path: str
  line: int  # 1-based line of the opening fence
  language: str
  code: str
  skip_reason: str = ""

  @property
  def where(self) -> str:
    return f"{self.path}:{self.line}"


def parse_blocks(text: str, path: str = "<string>") -> list:
  """Returns the command blocks (languages in COMMAND_LANGUAGES) of a Markdown text.

  Raises ValueError naming the line for an unclosed fence or a doc-check marker that is not
  `skip (reason)` or not directly before a command block.
  """
  lines = text.splitlines()
  blocks = []
  pending_marker = None  # (line number, skip reason) of a marker awaiting its block
  index = 0
  while index < len(lines):
    stripped = lines[index].strip()
    marker = _MARKER.match(stripped)
    fence = _FENCE.match(stripped)
    if marker:
      skip = _SKIP.match(marker.group(1))
      if not skip:
        raise ValueError(f"{path}:{index + 1}: doc-check marker {stripped!r}: expected "
                         "'<!-- doc-check: skip (reason) -->'")
      pending_marker = (index + 1, skip.group(1))
    elif fence:
      end = _closing_fence(lines, index, fence.group(1), path)
      language = fence.group(2).lower()
      if language in COMMAND_LANGUAGES:
        reason = pending_marker[1] if pending_marker else ""
        blocks.append(Block(path, index + 1, language, "\n".join(lines[index + 1:end]) + "\n",
                            reason))
      elif pending_marker:
        raise ValueError(f"{path}:{pending_marker[0]}: doc-check marker before a "
                         f"'{language or 'plain'}' block, which is not a command")
      pending_marker = None
      index = end
    elif stripped and pending_marker:
      raise ValueError(f"{path}:{pending_marker[0]}: doc-check marker not directly before "
                       "a fenced block")
    index += 1
  if pending_marker:
    raise ValueError(f"{path}:{pending_marker[0]}: doc-check marker at the end of the file")
  return blocks


def _closing_fence(lines, start, fence, path) -> int:
  for index in range(start + 1, len(lines)):
    if lines[index].strip() == fence:
      return index
  raise ValueError(f"{path}:{start + 1}: fenced block never closed")


def console_commands(code: str) -> str:
  """The commands of a `console` block: `$ `-prompted lines (and their `\\` continuations)."""
  commands, continuing = [], False
  for line in code.splitlines():
    if line.startswith("$ ") or continuing:
      command = line[2:] if line.startswith("$ ") and not continuing else line
      commands.append(command)
      continuing = command.rstrip().endswith("\\")
  return "\n".join(commands) + "\n"


def prepare_workspace(workspace: str, python: str) -> dict:
  """Lays out the workspace described in the module docstring; returns the environment."""
  for name in REPO_DIRS_IN_WORKSPACE:
    os.symlink(os.path.join(REPO, name), os.path.join(workspace, name))
  os.makedirs(os.path.join(workspace, "venv", "bin"))
  shim = os.path.join(workspace, "venv", "bin", "python")
  with open(shim, "w", encoding="utf-8") as f:
    f.write("#!/bin/sh\n# doc-check: the checkout is importable already; installs are no-ops.\n"
            'if [ "$1" = "-m" ] && [ "$2" = "pip" ]; then exit 0; fi\n'
            f'exec {shlex.quote(python)} "$@"\n')
  os.chmod(shim, 0o755)
  os.makedirs(os.path.join(workspace, "tmp"))
  os.symlink(os.path.join("..", "demo_output", "model"), os.path.join(workspace, "tmp", "demo"))
  os.symlink(os.path.join("demo_output", "data", "shapes", "raw"),
             os.path.join(workspace, "ROOT"))
  env = workspace_environment(workspace, python)
  _write_photos(os.path.join(workspace, "photos"), python, env)
  return env


def workspace_environment(workspace: str, python: str) -> dict:
  """The environment the blocks run with in `workspace`."""
  env = dict(os.environ)
  env.update({
      "PYTHONPATH": os.pathsep.join(filter(None, [REPO, env.get("PYTHONPATH")])),
      "PATH": os.pathsep.join([os.path.dirname(python), env.get("PATH", "")]),
      "DEEPLAB_AXIAL_VENV": os.path.join(workspace, "venv"),
      "DEMO_OUTPUT": os.path.join(workspace, "demo_output"),
      "TF_CPP_MIN_LOG_LEVEL": "2",
  })
  env.pop("DEEPLAB_AXIAL_DATA_DIR", None)
  return env


def _write_photos(folder: str, python: str, env: dict):
  os.makedirs(folder)
  script = ("import sys, numpy as np; from PIL import Image\n"
            "rng = np.random.default_rng(0)\n"
            "for name, size in (('a', (48, 64)), ('b', (65, 40))):\n"
            "  pixels = rng.integers(0, 256, size + (3,), dtype=np.uint8)\n"
            "  Image.fromarray(pixels).save(f'{sys.argv[1]}/{name}.jpg')\n")
  subprocess.run([python, "-c", script, folder], env=env, check=True)


def block_command(block: Block, workspace: str, python: str) -> list:
  """The argv that runs `block` in `workspace` (with the one /tmp/ substitution)."""
  code = block.code.replace("/tmp/", os.path.join(workspace, "tmp") + "/")
  if block.language == "python":
    return [python, "-c", code]
  if block.language == "console":
    code = console_commands(code)
  code = "\n".join(_with_demo_args(line) for line in code.splitlines())
  return ["bash", "-euo", "pipefail", "-c", code]


def _with_demo_args(line: str) -> str:
  if line.strip() == DEMO_COMMAND:
    return demo_command()
  return line


def demo_command() -> str:
  """The README's demo command with DEMO_ARGS (a bash command line)."""
  return f"{DEMO_COMMAND} {' '.join(DEMO_ARGS)}"


def run_block(block: Block, workspace: str, python: str, env: dict):
  """Runs one block; returns (passed, seconds, tail of its combined output)."""
  start = time.monotonic()
  result = subprocess.run(block_command(block, workspace, python), cwd=workspace, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          check=False)
  return result.returncode == 0, time.monotonic() - start, result.stdout[-OUTPUT_TAIL_CHARS:]


def check(paths, workspace: str, python: str) -> bool:
  """Runs the blocks of `paths` (relative to the repository); prints a report."""
  blocks = []
  for path in paths:
    with open(os.path.join(REPO, path), encoding="utf-8") as f:
      blocks.extend(parse_blocks(f.read(), path))
  env = prepare_workspace(workspace, python)
  failed, skipped = [], []
  for block in blocks:
    if block.skip_reason:
      skipped.append(block)
      continue
    passed, seconds, output = run_block(block, workspace, python, env)
    print(f"{'ok  ' if passed else 'FAIL'} {block.where} ({block.language}, {seconds:.0f} s)",
          flush=True)
    if not passed:
      failed.append(block)
      print(output, flush=True)
  for block in skipped:
    print(f"skip {block.where} ({block.language}): {block.skip_reason}")
  ran = len(blocks) - len(skipped)
  print(f"{ran - len(failed)}/{ran} documented blocks passed, {len(skipped)} skipped"
        + (f"; failed: {', '.join(b.where for b in failed)}" if failed else ""))
  return not failed


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
  parser.add_argument("files", nargs="*", default=list(DOC_FILES),
                      help="Markdown files relative to the repository (default: %(default)s)")
  parser.add_argument("--workspace", help="empty or new directory to run in (kept; default: "
                      "a temporary directory, deleted)")
  parser.add_argument("--python", default=sys.executable,
                      help="interpreter for python blocks and the demo (default: this one)")
  args = parser.parse_args(argv)
  try:
    if args.workspace:
      os.makedirs(args.workspace, exist_ok=True)
      return 0 if check(args.files, os.path.abspath(args.workspace), args.python) else 1
    with tempfile.TemporaryDirectory(prefix="doc_check_") as workspace:
      return 0 if check(args.files, workspace, args.python) else 1
  except (ValueError, OSError) as error:
    print(f"error: {error}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main())
