#!/usr/bin/env bash
# Sets up a virtualenv in .venv (once) and runs the test suite: the fast tests first, then
# the tests marked slow as a separate step (full_rehearsal, every shipped config at full
# size, is run on demand: see README "Rehearsal"). Usage: bash scripts/test.sh [extra pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${DEEPLAB_AXIAL_VENV:-.venv}"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet -e ".[test,torch]"

run_pytest() {
  # pytest exits 5 when a selection holds no tests; that is not a failure of the suite.
  local rc=0
  "$VENV/bin/python" -m pytest "$@" || rc=$?
  if [ "$rc" -eq 5 ]; then rc=0; fi
  return "$rc"
}

# Builds the CPU kernels once (20-40 s, cached) instead of in each test worker at once.
"$VENV/bin/python" -c "from deeplab_axial.layers import fused_attention; fused_attention.load_library()"
echo "== fast tests =="
run_pytest -q -n 2 --dist loadfile --durations=15 -m "not slow and not full_rehearsal" "$@"
echo "== slow tests =="
# One process per heavy test file (scripts/run_test_files.py says why), two at a time, the
# longest (measured in CI) first so that short ones fill the end; the light files share one
# process, started first.
"$VENV/bin/python" scripts/run_test_files.py --jobs 2 -m "slow and not full_rehearsal" "$@" \
  --first tests/docs/test_check_docs.py tests/models/test_axial_deeplab.py \
  tests/training/test_multi_worker_eval.py tests/training/test_mixed_precision_xla.py \
  tests/export/test_pq_parity.py tests/training/test_rehearsal.py \
  tests/training/test_experiment.py tests/models/test_axial_resnet.py \
  tests/models/test_recompute.py tests/training/test_resume_cli.py \
  tests/models/test_catalogue.py tests/training/test_pretrain_finetune_chain.py \
  --together tests/export/test_task_parity.py tests/data/test_dataset_info_file.py \
  tests/training/test_multi_worker.py tests/models/test_torch_weights.py \
  tests/models/test_builder.py tests/export/test_predict.py \
  tests/models/test_panoptic_deeplab.py tests/models/test_segvit_model.py \
  tests/export/test_checkpoint_and_tflite.py tests/export/test_saved_model.py \
  tests/layers/test_axial_attention.py tests/layers/test_axial_blocks.py \
  tests/fixtures/test_official_fixtures.py tests/models/test_gated_scnn_model.py \
  tests/models/test_resnet.py
