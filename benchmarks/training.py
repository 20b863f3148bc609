"""Benchmark: training throughput of the shapes demo model, XLA and 1 vs 2 replicas.

Builds the model of `configs/shapes/axial_deeplab_demo.textproto` with
`deeplab_axial.models.builder.build_model` and trains it through `loop.Trainer` (the
trainer's own step: forward, Panoptic-DeepLab loss, gradients, Lookahead(RAdam) update)
on one fixed in-memory global batch with random targets, so the input pipeline is not
measured. Four settings, each in a fresh subprocess (logical CPU devices must be set
before TensorFlow starts):

  * 1 replica, no XLA (the baseline);
  * 1 replica, `train.jit_compile` (XLA for the forward/backward pass);
  * 2 replicas (MirroredStrategy over 2 logical CPUs of the same 2 cores), with the
    config's `train.sync_batch_norm`;
  * 2 replicas with XLA (sync batch norm is then ignored, see `sync_batch_norm.py`).

Steps/s come from the trainer's own progress line (images/s over the timed steps,
excluding tracing and the final checkpoint write) and are printed as ratios to the
baseline measured in the same run. The global batch is the config's (8) in every
setting, so 2 replicas split the same work.

Usage: python benchmarks/training.py [--quick] [--steps 30] [--batch_size 8]
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_CONFIG = os.path.join(_REPO, "configs", "shapes", "axial_deeplab_demo.textproto")
_SETTINGS = (("1 replica", 1, False), ("1 replica + XLA", 1, True),
             ("2 replicas", 2, False), ("2 replicas + XLA", 2, True))
_THROUGHPUT = re.compile(r"\| ([0-9.]+) img/s \|")


def _synthetic_batch(batch_size, crop_size, num_classes):
  """One global batch: random images and Panoptic-DeepLab targets of matching shapes."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(0)
  height, width = crop_size
  ones = np.ones((batch_size, height, width), np.float32)
  return {
      "image": rng.uniform(0, 255, (batch_size, height, width, 3)).astype(np.float32),
      "semantic": rng.integers(0, num_classes, (batch_size, height, width)).astype(np.int32),
      "semantic_weights": ones,
      "center_heatmap": rng.uniform(0, 1, (batch_size, height, width, 1)).astype(np.float32),
      "center_weights": ones,
      "center_offset": rng.normal(0, 10, (batch_size, height, width, 2)).astype(np.float32),
      "offset_weights": ones,
  }


def _measure(replicas, jit_compile, steps, warmup_steps, batch_size):
  """Runs in the subprocess: returns images/s of `steps` trainer steps after warm-up."""
  # pylint: disable=import-outside-toplevel
  import tensorflow as tf
  from deeplab_axial import config as config_lib
  from deeplab_axial import losses
  from deeplab_axial.data import datasets
  from deeplab_axial.models import builder
  from deeplab_axial.training import distribution
  from deeplab_axial.training import loop
  from deeplab_axial.training import optimizers
  from deeplab_axial.training import sync_batch_norm
  # pylint: enable=import-outside-toplevel
  strategy = distribution.create_strategy(num_cpu_replicas=replicas)
  config = config_lib.load_config(_CONFIG, [f"train.batch_size: {batch_size}"])
  info = datasets.get_dataset_info(config.dataset.name)
  total_steps = warmup_steps + steps
  with strategy.scope():
    model = builder.build_model(config, info)
    optimizer, _ = optimizers.build_optimizer(config.solver, config.train.steps)
  sync_batch_norm.configure_sync_batch_norm(model, strategy, config.train.sync_batch_norm,
                                            jit_compile)
  loss = losses.PanopticDeepLabLoss(
      semantic_weight=config.loss.semantic_weight, center_weight=config.loss.center_weight,
      offset_weight=config.loss.offset_weight, top_k_fraction=config.loss.semantic_top_k,
      ignore_label=info.ignore_label, check_finite=False)
  batch = _synthetic_batch(batch_size, tuple(config.dataset.crop_size), info.num_classes)

  def dataset_fn(context):
    per_replica = context.get_per_replica_batch_size(batch_size)
    return tf.data.Dataset.from_tensor_slices(batch).batch(per_replica).repeat()

  lines = []
  with tempfile.TemporaryDirectory() as model_dir:
    trainer = loop.Trainer(
        strategy=strategy, model=model, optimizer=optimizer,
        compute_losses=lambda b, o: loss(b, o, batch_size),
        loss_names=("total",) + tuple(loss.part_names), train_dataset_fn=dataset_fn,
        global_batch_size=batch_size, total_steps=total_steps, model_dir=model_dir,
        steps_per_loop=steps, checkpoint_interval=10 * total_steps,
        summary_interval=10 * total_steps, jit_compile=jit_compile, log_fn=lines.append)
    trainer.train(until_step=warmup_steps)
    lines.clear()
    trainer.train(until_step=total_steps)
  images_per_second = float(_THROUGHPUT.search(lines[-1]).group(1))
  return {"steps_per_second": images_per_second / batch_size,
          "replicas": strategy.num_replicas_in_sync}


def _run_setting(replicas, jit_compile, args):
  command = [sys.executable, os.path.abspath(__file__), "--_worker",
             f"{replicas},{int(jit_compile)}", f"--steps={args.steps}",
             f"--warmup_steps={args.warmup_steps}", f"--batch_size={args.batch_size}"]
  result = subprocess.run(command, capture_output=True, text=True, check=False,
                          timeout=3600)
  if result.returncode:
    raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
  return json.loads(result.stdout.strip().splitlines()[-1])


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
  parser.add_argument("--quick", action="store_true", help="4 timed steps, batch 4")
  parser.add_argument("--steps", type=int, default=30, help="timed steps per setting")
  parser.add_argument("--warmup_steps", type=int, default=2,
                      help="untimed steps (tracing/compilation) before timing")
  parser.add_argument("--batch_size", type=int, default=8, help="global batch size")
  parser.add_argument("--_worker", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args._worker:  # pylint: disable=protected-access
    replicas, jit_compile = (int(v) for v in args._worker.split(","))  # pylint: disable=protected-access
    print(json.dumps(_measure(replicas, bool(jit_compile), args.steps, args.warmup_steps,
                              args.batch_size)))
    return
  if args.quick:
    args.steps, args.batch_size = 4, 4
  print(f"demo model ({os.path.relpath(_CONFIG, _REPO)}), global batch {args.batch_size}, "
        f"{args.steps} timed steps after {args.warmup_steps} warm-up steps, CPU")
  print(f"{'setting':<20} {'steps/s':>8} {'img/s':>8} {'ratio':>7}")
  baseline = None
  for name, replicas, jit_compile in _SETTINGS:
    result = _run_setting(replicas, jit_compile, args)
    steps_per_second = result["steps_per_second"]
    baseline = baseline or steps_per_second
    print(f"{name:<20} {steps_per_second:8.3f} {steps_per_second * args.batch_size:8.2f} "
          f"{steps_per_second / baseline:6.2f}x", flush=True)


if __name__ == "__main__":
  main()
