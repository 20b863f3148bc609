"""Checkpoints: resolve a path, restore a trained model, initialise from another run.

One module below `training` and `export` (it imports only TensorFlow), used by the
trainer (resume is `tf.train.CheckpointManager`'s job; initial checkpoints and evaluation
restores are here), the exporter and `deeplab_axial.predict`.

* `resolve(path)`: a checkpoint prefix from a prefix or a model directory.
* `restore_model(model, path)`: every variable of `model` from a trainer checkpoint
  (`tf.train.Checkpoint(model=...)`), for evaluation, export and prediction.
* `restore_initial(items, path, allow_partial=False)`: initialisation of a new run from
  another run's checkpoint (e.g. an ImageNet backbone). Variables are matched through the
  checkpoint's object graph, so the report is exact: `restored R/T variables of <modules>`.
  A relative-position table (`relative_embeddings`) whose source has more rows (odd) is
  adapted by keeping the central rows, i.e. the offsets the smaller span still uses (the
  paper's transfer of ImageNet global attention to span 65). Any other shape mismatch, and
  any variable missing from the checkpoint (unless `allow_partial`), is an error naming
  the variables.
"""
import dataclasses
import os
from typing import Dict, List, Tuple

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import trackable_object_graph_pb2

_OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"
_RELATIVE_TABLE_NAME = "relative_embeddings"
# Variables listed by name in an error message (the rest are counted).
_LISTED = 5


class CheckpointMismatchError(ValueError):
  """A checkpoint does not fit the model it is restored into."""


def resolve(path) -> str:
  """A checkpoint prefix from a prefix or a model directory (its latest checkpoint).

  Raises:
    FileNotFoundError: when `path` is neither an existing checkpoint prefix (its `.index`
      file exists) nor a directory holding a checkpoint.
  """
  path = os.fspath(path)
  if tf.io.gfile.exists(path + ".index"):
    return path
  if tf.io.gfile.isdir(path):
    latest = tf.train.latest_checkpoint(path)
    if latest:
      return latest
    raise FileNotFoundError(f"checkpoint directory {path} holds no checkpoint (no "
                            f"'checkpoint' file naming one)")
  raise FileNotFoundError(f"checkpoint {path} is neither a checkpoint prefix (no "
                          f"{path}.index) nor a directory")


def step_of(path) -> int:
  """The step number at the end of a checkpoint prefix such as `.../ckpt-1200`."""
  try:
    return int(os.fspath(path).rsplit("-", 1)[1])
  except (IndexError, ValueError) as e:
    raise ValueError(f"checkpoint path {path!r} does not end in -<step>") from e


def restore_model(model, checkpoint) -> str:
  """Restores every variable of `model` from a trainer checkpoint.

  Args:
    model: the freshly built model (same architecture as the trained one).
    checkpoint: a prefix or a model directory (see `resolve`).

  Returns:
    The checkpoint prefix restored.

  Raises:
    FileNotFoundError: no checkpoint at `checkpoint`.
    CheckpointMismatchError: a model variable is missing from the checkpoint or has
      another shape (a silent fresh init would evaluate or export a random model).
  """
  prefix = resolve(checkpoint)
  try:
    status = tf.train.Checkpoint(model=model).restore(prefix).expect_partial()
    status.assert_existing_objects_matched()
  except (AssertionError, ValueError) as e:
    raise CheckpointMismatchError(
        f"checkpoint {prefix} does not match the model built from the config (is it the "
        f"same architecture?): {e}") from e
  return prefix


@dataclasses.dataclass(frozen=True)
class RestoreReport:
  """What `restore_initial` did.

  Attributes:
    path: the checkpoint prefix read.
    modules: names of the restored items (e.g. ("backbone",)).
    restored: variable paths restored (adapted ones included).
    adapted: {variable path: (source shape, target shape)} of centre-cropped tables.
    missing: variable paths not in the checkpoint (kept at their initial values).
  """
  path: str
  modules: Tuple[str, ...]
  restored: Tuple[str, ...]
  adapted: Dict[str, Tuple[Tuple[int, ...], Tuple[int, ...]]]
  missing: Tuple[str, ...]

  @property
  def total(self) -> int:
    return len(self.restored) + len(self.missing)

  def summary(self) -> str:
    line = (f"initial checkpoint: restored {len(self.restored)}/{self.total} variables of "
            f"{', '.join(self.modules)} from {self.path}")
    if self.adapted:
      line += f" ({len(self.adapted)} relative-position tables centre-cropped)"
    return line


def _live_variables(root, graph, node_id, path, found, visited):
  """Fills `found` {id(variable): (path, variable, checkpoint key or None)} under `root`.

  Walks the live objects and the checkpoint's object graph together, child name by
  child name, as `tf.train.Checkpoint.restore` matches them. A variable reachable by
  several paths counts once (with a checkpoint key if any path has one).
  """
  node = graph.nodes[node_id] if node_id is not None else None
  if isinstance(root, tf.Variable):
    key = None
    if node is not None:
      key = next((a.checkpoint_key for a in node.attributes if a.name == "VARIABLE_VALUE"),
                 None)
    if id(root) not in found or found[id(root)][2] is None:
      found[id(root)] = (path, root, key)
    return
  if (id(root), node_id) in visited:
    return
  visited.add((id(root), node_id))
  children = {} if node is None else {c.local_name: c.node_id for c in node.children}
  for name, child in root._trackable_children().items():  # pylint: disable=protected-access
    _live_variables(child, graph, children.get(name), f"{path}/{name}", found, visited)


def _adapted_table(value, variable, path):
  """The central rows of a larger relative table, or None when not a table case."""
  source, target = value.shape, tuple(variable.shape)
  if (_RELATIVE_TABLE_NAME in path and len(source) == 2 and len(target) == 2
      and source[1] == target[1] and source[0] > target[0] and source[0] % 2 == 1
      and target[0] % 2 == 1):
    start = (source[0] - target[0]) // 2
    return value[start:start + target[0]]
  return None


def restore_initial(items, checkpoint, *, allow_partial=False) -> RestoreReport:
  """Initialises `items` (name -> model part) from another run's checkpoint.

  `items` names children of the checkpoint's root, e.g. {"backbone": backbone} for the
  trainer's `backbone` item or {"model": model} for the whole model.

  Args:
    items: dict of trackable objects (built, so their variables exist).
    checkpoint: a prefix or a model directory.
    allow_partial: accept variables missing from the checkpoint (reported, kept at
      their initial values); otherwise they are an error.

  Returns:
    A `RestoreReport`.

  Raises:
    FileNotFoundError: no checkpoint at `checkpoint`.
    CheckpointMismatchError: a shape mismatch other than an adaptable relative table
      (names the variable and both shapes), or (without `allow_partial`) variables
      missing from the checkpoint (names the first few).
  """
  prefix = resolve(checkpoint)
  reader = tf.train.load_checkpoint(prefix)
  graph = trackable_object_graph_pb2.TrackableObjectGraph()
  graph.ParseFromString(reader.get_tensor(_OBJECT_GRAPH_KEY))
  found, visited = {}, set()
  root_children = {c.local_name: c.node_id for c in graph.nodes[0].children}
  for name, item in items.items():
    _live_variables(item, graph, root_children.get(name), name, found, visited)
  variables = sorted(found.values(), key=lambda entry: entry[0])
  shapes = reader.get_variable_to_shape_map()
  assignments, adapted, missing, mismatched = [], {}, [], []
  for path, variable, key in variables:
    if key is None or key not in shapes:
      missing.append(path)
      continue
    value = reader.get_tensor(key)
    if tuple(value.shape) != tuple(variable.shape):
      table = _adapted_table(value, variable, path)
      if table is None:
        mismatched.append(f"{path}: checkpoint {list(value.shape)} vs model "
                          f"{variable.shape.as_list()}")
        continue
      adapted[path] = (tuple(value.shape), tuple(variable.shape))
      value = table
    assignments.append((path, variable, value))
  if mismatched:
    raise CheckpointMismatchError(
        f"initial checkpoint {prefix}: {len(mismatched)} variable(s) of "
        f"{', '.join(items)} have another shape than in the checkpoint (different "
        f"architecture, stem or width?): {_listed(mismatched)}")
  if missing and not allow_partial:
    raise CheckpointMismatchError(
        f"initial checkpoint {prefix}: restored {len(assignments)}/{len(variables)} "
        f"variables of {', '.join(items)}; not in the checkpoint: {_listed(missing)}. "
        f"Set train.allow_partial_init: true to keep those at their initial values.")
  for _, variable, value in assignments:
    variable.assign(np.asarray(value, variable.dtype.as_numpy_dtype))
  return RestoreReport(prefix, tuple(items), tuple(p for p, _, _ in assignments), adapted,
                       tuple(missing))


def _listed(names: List[str]) -> str:
  shown = "; ".join(names[:_LISTED])
  return shown + (f"; ... ({len(names) - _LISTED} more)" if len(names) > _LISTED else "")


__all__ = ["CheckpointMismatchError", "RestoreReport", "resolve", "restore_initial",
           "restore_model", "step_of"]
