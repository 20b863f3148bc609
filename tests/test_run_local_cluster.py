"""tests.helpers.run_local_cluster: outputs, TF_CONFIG, and failing fast when a worker fails."""
import sys

from tests import helpers


def test_each_worker_gets_its_task_index_and_long_output_is_kept_whole():
  # 200 kB per worker: more than a pipe holds, so a worker blocked on its output would hang.
  code = ("import json, os; config = json.loads(os.environ['TF_CONFIG']); "
          "print('x' * 200000); print(config['task']['index'], len(config['cluster']['worker']))")
  outcomes = helpers.run_local_cluster([[sys.executable, "-c", code]] * 2, timeout_s=120)
  assert [returncode for returncode, _ in outcomes] == [0, 0]
  for index, (_, output) in enumerate(outcomes):
    lines = output.splitlines()
    assert lines[-2] == "x" * 200000
    assert lines[-1] == f"{index} 2"


def test_a_failing_worker_gets_the_others_killed_with_its_name():
  # Without the kill, the sleeping worker would exit 0 after 300 s.
  outcomes = helpers.run_local_cluster(
      [[sys.executable, "-c", "import time; time.sleep(300)"],
       [sys.executable, "-c", "import sys; print('bad config'); sys.exit(3)"]],
      timeout_s=600)
  (sleeper_code, sleeper_output), (failed_code, failed_output) = outcomes
  assert failed_code == 3 and "bad config" in failed_output
  assert sleeper_code < 0, sleeper_code
  assert "[killed by run_local_cluster: worker 1 exited with code 3]" in sleeper_output


def test_workers_past_the_timeout_are_killed_and_say_so():
  outcomes = helpers.run_local_cluster([[sys.executable, "-c", "import time; time.sleep(300)"]],
                                       timeout_s=2)
  assert outcomes[0][0] < 0
  assert "[killed by run_local_cluster: timed out after 2 s]" in outcomes[0][1]
