"""scripts/run_test_files.py: one pytest process per file, the selection kept, failures
named in the summary and the exit status."""
import os
import re
import subprocess
import sys

_SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "scripts", "run_test_files.py")


def test_each_file_runs_its_selected_tests_in_its_own_process(tmp_path):
  (tmp_path / "pytest.ini").write_text(
      "[pytest]\nmarkers =\n  slow: slow\naddopts = -p no:cacheprovider\n")
  # Each test records its process id; a file that fails must be named and fail the run.
  (tmp_path / "test_a.py").write_text(
      "import os, pytest\n"
      "@pytest.mark.slow\ndef test_one(): open('pid_a1', 'w').write(str(os.getpid()))\n"
      "@pytest.mark.slow\ndef test_two(): open('pid_a2', 'w').write(str(os.getpid()))\n"
      "def test_fast_not_selected(): open('fast', 'w').write('ran')\n")
  (tmp_path / "test_b.py").write_text(
      "import os, pytest\n"
      "@pytest.mark.slow\ndef test_fails():\n"
      "  open('pid_b', 'w').write(str(os.getpid()))\n  assert False, 'b failed'\n")
  (tmp_path / "test_c.py").write_text("def test_fast(): pass\n")
  result = subprocess.run([sys.executable, _SCRIPT, "--jobs", "2", "-m", "slow"],
                          cwd=tmp_path, capture_output=True, text=True, check=False,
                          timeout=300)
  assert result.returncode == 1, result.stdout + result.stderr
  pids = {name: (tmp_path / name).read_text() for name in ("pid_a1", "pid_a2", "pid_b")}
  assert pids["pid_a1"] == pids["pid_a2"] != pids["pid_b"]
  assert str(os.getpid()) not in pids.values()
  assert not (tmp_path / "fast").exists()
  assert "== test_a.py: passed in" in result.stdout
  assert "== test_b.py: FAILED in" in result.stdout and "b failed" in result.stdout
  assert "test_c.py" not in result.stdout
  assert re.search(r"== 1/2 test files passed in 0 min \d+ s; failed: test_b.py ==\Z",
                   result.stdout.rstrip()), result.stdout

  passing = subprocess.run([sys.executable, _SCRIPT, "-m", "slow", "test_a.py"],
                           cwd=tmp_path, capture_output=True, text=True, check=False,
                           timeout=300)
  assert passing.returncode == 0, passing.stdout + passing.stderr
  assert "== 1/1 test files passed in" in passing.stdout


def test_files_named_first_start_first(tmp_path):
  (tmp_path / "pytest.ini").write_text("[pytest]\naddopts = -p no:cacheprovider\n")
  for name in ("test_a.py", "test_b.py", "test_c.py"):
    (tmp_path / name).write_text(
        "def test_it(): open('order', 'a').write(__name__ + ' ')\n")
  # One job: files run one after another, so the order they append in is the start order.
  result = subprocess.run([sys.executable, _SCRIPT, "--jobs", "1", "--first", "test_c.py",
                           "test_missing.py", "test_b.py"],
                          cwd=tmp_path, capture_output=True, text=True, check=False,
                          timeout=300)
  assert result.returncode == 0, result.stdout + result.stderr
  assert (tmp_path / "order").read_text().split() == ["test_c", "test_b", "test_a"]


def test_files_named_together_share_one_process_started_first(tmp_path):
  (tmp_path / "pytest.ini").write_text("[pytest]\naddopts = -p no:cacheprovider\n")
  for name in ("test_a.py", "test_b.py", "test_c.py", "test_d.py"):
    (tmp_path / name).write_text(
        "import os\n"
        "def test_it(): open('order', 'a').write(f'{__name__}:{os.getpid()} ')\n")
  result = subprocess.run([sys.executable, _SCRIPT, "--jobs", "1", "--first", "test_d.py",
                           "--together", "test_c.py", "test_a.py"],
                          cwd=tmp_path, capture_output=True, text=True, check=False,
                          timeout=300)
  assert result.returncode == 0, result.stdout + result.stderr
  order = [entry.split(":") for entry in (tmp_path / "order").read_text().split()]
  assert [name for name, _ in order] == ["test_c", "test_a", "test_d", "test_b"]
  pids = [pid for _, pid in order]
  assert pids[0] == pids[1] and len({pids[0], pids[2], pids[3]}) == 3
  assert "== test_c.py test_a.py: passed in" in result.stdout
  assert "== 4/4 test files passed in" in result.stdout
