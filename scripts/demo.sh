#!/usr/bin/env bash
# Sets up .venv (once), then the CPU demo: builds the procedural "shapes" panoptic dataset
# (COCO panoptic format -> TFRecords), trains a small Axial-DeepLab on it, evaluates it
# (PQ/SQ/RQ/mIoU in demo_output/model/eval_metrics.json) and exports a versioned SavedModel
# to demo_output/export/<version>/. Running it again resumes/finishes without redoing work
# and re-exports (the config pins export.version, so the export is overwritten).
# DEMO_OUTPUT (default demo_output, relative to the repository) may be absolute.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${DEEPLAB_AXIAL_VENV:-.venv}"
OUT="${DEMO_OUTPUT:-demo_output}"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet -e .
case "$OUT" in
  /*) ;;
  *) OUT="$PWD/$OUT" ;;
esac
export DEEPLAB_AXIAL_DATA_DIR="${DEEPLAB_AXIAL_DATA_DIR:-$OUT/data}"
CONFIG=configs/shapes/axial_deeplab_demo.textproto

"$VENV/bin/python" trainer/train.py --config_file="$CONFIG" --mode=train_and_eval \
  --model_dir="$OUT/model" "$@"
"$VENV/bin/python" trainer/export.py --config_file="$CONFIG" --checkpoint="$OUT/model" \
  --output_dir="$OUT/export" --overwrite
echo "All metrics: $OUT/model/eval_metrics.json; SavedModel: $OUT/export/"
"$VENV/bin/python" trainer/show_metrics.py --model_dir="$OUT/model"
