"""Choosing a `tf.distribute` strategy from command-line style options."""
import json
import os

from absl import logging
import tensorflow as tf


def create_strategy(num_gpus=0, tpu=None, num_cpu_replicas=0):
  """Returns the strategy for the requested devices.

  Precedence: a TPU address, then a multi-worker `TF_CONFIG`, then GPUs, then logical CPUs.

  Args:
    num_gpus: number of GPUs for `MirroredStrategy` (0 or 1 mean one device).
    tpu: TPU name or address for `TPUClusterResolver` ("local" for a TPU VM), or None.
    num_cpu_replicas: >1 splits the host CPU into that many logical devices and mirrors
      over them (for testing data parallelism without accelerators). Must be requested
      before TensorFlow initialises its devices.

  Returns:
    A `tf.distribute.Strategy`.

  Raises:
    ValueError: for negative counts, or more GPUs than are visible.
  """
  if num_gpus < 0 or num_cpu_replicas < 0:
    raise ValueError(f"num_gpus ({num_gpus}) and num_cpu_replicas ({num_cpu_replicas}) "
                     "must be >= 0")
  if tpu:
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)
  if _multi_worker_config():
    return tf.distribute.MultiWorkerMirroredStrategy()
  if num_gpus > 1:
    gpus = tf.config.list_logical_devices("GPU")
    if len(gpus) < num_gpus:
      raise ValueError(f"--num_gpus={num_gpus} but only {len(gpus)} GPU(s) are visible")
    return tf.distribute.MirroredStrategy([d.name for d in gpus[:num_gpus]])
  if num_gpus == 1:
    return tf.distribute.OneDeviceStrategy("/gpu:0")
  if num_cpu_replicas > 1:
    return tf.distribute.MirroredStrategy(_logical_cpus(num_cpu_replicas))
  return tf.distribute.get_strategy()


def _multi_worker_config():
  """True when TF_CONFIG describes a cluster with more than one worker."""
  raw = os.environ.get("TF_CONFIG")
  if not raw:
    return False
  try:
    cluster = json.loads(raw).get("cluster", {})
  except json.JSONDecodeError as e:
    raise ValueError(f"TF_CONFIG is not valid JSON: {e}") from e
  return sum(len(cluster.get(k, [])) for k in ("chief", "worker")) > 1


def _logical_cpus(count):
  """Splits the first physical CPU into `count` logical devices when still possible."""
  # Only the physical-device and configuration queries leave the runtime uninitialised;
  # listing logical devices would initialise it and make the split impossible.
  cpu = tf.config.list_physical_devices("CPU")[0]
  configured = tf.config.get_logical_device_configuration(cpu) or []
  if len(configured) < count:
    try:
      tf.config.set_logical_device_configuration(
          cpu, [tf.config.LogicalDeviceConfiguration()] * count)
    except RuntimeError as e:
      existing = len(tf.config.list_logical_devices("CPU"))
      raise ValueError(
          f"cannot create {count} logical CPU replicas after TensorFlow initialised its "
          f"devices ({existing} exist); request them before any TF op runs") from e
    logging.info("Split the host CPU into %d logical devices.", count)
  return [d.name for d in tf.config.list_logical_devices("CPU")[:count]]


def is_chief(strategy):
  """Whether this worker writes checkpoints, summaries and metric files."""
  resolver = getattr(strategy, "cluster_resolver", None)
  if resolver is None or not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
    return True
  task_type, task_id = resolver.task_type, resolver.task_id
  return task_type == "chief" or (task_type == "worker" and task_id == 0 and
                                  "chief" not in resolver.cluster_spec().as_dict())


def num_workers(strategy):
  """How many worker processes take part in `strategy` (1 unless multi-worker)."""
  resolver = getattr(strategy, "cluster_resolver", None)
  if resolver is None or not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
    return 1
  jobs = resolver.cluster_spec().as_dict()
  return max(1, len(jobs.get("chief", ())) + len(jobs.get("worker", ())))
