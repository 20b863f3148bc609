"""MultiWorkerMirroredStrategy from TF_CONFIG: 2 local worker processes on loopback.

Run as a script, this file is one worker: `python test_multi_worker.py MODEL_DIR OUT_NPZ
TOTAL_STEPS` with TF_CONFIG set. It trains the toy model through `loop.Trainer` under
`distribution.create_strategy()`, resuming from MODEL_DIR, and saves its final weights.
"""
import os
import subprocess
import sys

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras  # noqa: E402

from tests import helpers  # noqa: E402

_GLOBAL_BATCH = 4
_WORKER_TIMEOUT_S = 240


def _global_batch():
  rng = np.random.default_rng(0)
  return {"image": rng.normal(size=(_GLOBAL_BATCH, 4, 4, 3)).astype(np.float32),
          "target": rng.normal(size=(_GLOBAL_BATCH, 4, 4, 2)).astype(np.float32)}


def _dataset_fn(context):
  """Each input pipeline (worker) reads its share of the examples of every global batch."""
  per_replica = context.get_per_replica_batch_size(_GLOBAL_BATCH)
  examples = tf.data.Dataset.from_tensor_slices(_global_batch())
  examples = examples.shard(context.num_input_pipelines, context.input_pipeline_id)
  return examples.batch(per_replica).repeat()


def _model():
  """Conv + batch norm; the batch norm is synchronized across the workers."""
  model = tf_keras.Sequential([
      tf_keras.layers.Conv2D(2, 3, padding="same",
                             kernel_initializer=tf_keras.initializers.GlorotUniform(seed=1)),
      tf_keras.layers.BatchNormalization(),
  ])
  model.build((None, 4, 4, 3))
  return model


def _mse_losses(batch, outputs):
  per_example = tf.reduce_mean(tf.square(outputs - batch["target"]), axis=[1, 2, 3])
  total = tf.nn.compute_average_loss(per_example, global_batch_size=_GLOBAL_BATCH)
  return {"total": total}


def _train(strategy, model_dir, total_steps, until_steps):
  """Trains with loop.Trainer, resuming from model_dir; stops at each of `until_steps`."""
  from deeplab_axial.training import loop  # pylint: disable=import-outside-toplevel
  from deeplab_axial.training import sync_batch_norm  # pylint: disable=import-outside-toplevel
  with strategy.scope():
    model = _model()
    optimizer = tf_keras.optimizers.SGD(0.1, momentum=0.9)
  sync_batch_norm.configure_sync_batch_norm(model, strategy, enabled=True)
  if strategy.num_replicas_in_sync == 1:  # The reference: unfused like synchronized BN.
    model.layers[-1].fused = False
  trainer = loop.Trainer(strategy=strategy, model=model, optimizer=optimizer,
                         compute_losses=_mse_losses, loss_names=("total",),
                         train_dataset_fn=_dataset_fn, global_batch_size=_GLOBAL_BATCH,
                         total_steps=total_steps, model_dir=model_dir, checkpoint_interval=1,
                         log_fn=print)
  trainer.restore_or_initialize()
  for until_step in until_steps:
    trainer.train(until_step=until_step)
  return model


def _run_cluster(model_dir, out_dir, total_steps, until_steps):
  """Runs the two workers to completion; returns their (returncode, output) pairs."""
  return helpers.run_local_cluster(
      [[sys.executable, os.path.abspath(__file__), str(model_dir),
        str(out_dir / f"worker{index}.npz"), str(total_steps),
        ",".join(map(str, until_steps))] for index in range(2)], _WORKER_TIMEOUT_S)


def _files_under(directory):
  return sorted(os.path.relpath(os.path.join(root, name), directory)
                for root, _, names in os.walk(directory) for name in names)


@pytest.mark.slow  # 11 s idle, 60 s on the loaded machine: four TensorFlow processes.
def test_two_workers_train_like_one_process_and_only_the_chief_keeps_files(tmp_path):
  model_dir = tmp_path / "model"
  # First run: stops at step 2, then continues to 3 in the same process (the non-chief's
  # temporary directory is removed after each and recreated); second run resumes at 3.
  for until_steps in ((2, 3), (4,)):
    results = _run_cluster(model_dir, tmp_path, total_steps=4, until_steps=until_steps)
    for index, (returncode, output) in enumerate(results):
      assert returncode == 0, f"worker {index} failed:\n{output[-4000:]}"
  for _, output in results:  # Both workers restored the chief's checkpoint.
    assert f"Resumed from {model_dir / 'ckpt-3'} at step 3." in output

  files = _files_under(model_dir)
  assert "checkpoint" in files and "ckpt-4.index" in files
  assert not [f for f in files if f.startswith(".worker_tmp")], files
  assert not os.path.exists(model_dir / ".worker_tmp_1")

  reference = _train(tf.distribute.get_strategy(), str(tmp_path / "single"), 4, (4,))
  for index in range(2):
    weights = np.load(tmp_path / f"worker{index}.npz")
    assert len(weights.files) == len(reference.weights) == 6
    for i, expected in enumerate(reference.weights):
      np.testing.assert_allclose(weights[f"w{i}"], expected.numpy(), rtol=1e-5, atol=1e-6,
                                 err_msg=f"worker {index}: {expected.name}")


def test_create_strategy_splits_the_cpu_in_a_fresh_process():
  """num_cpu_replicas must work before TF initialises (conftest already split this one)."""
  script = ("from deeplab_axial.training import distribution; "
            "print(distribution.create_strategy(num_cpu_replicas=2).num_replicas_in_sync)")
  env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
  result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=_WORKER_TIMEOUT_S, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.split() == ["2"]


def _worker_main(model_dir, out_path, total_steps, until_steps):
  from deeplab_axial.training import distribution  # pylint: disable=import-outside-toplevel
  strategy = distribution.create_strategy()
  assert isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy), strategy
  model = _train(strategy, model_dir, int(total_steps),
                 [int(s) for s in until_steps.split(",")])
  np.savez(out_path, **{f"w{i}": w.numpy() for i, w in enumerate(model.weights)})


if __name__ == "__main__":
  _worker_main(*sys.argv[1:])
