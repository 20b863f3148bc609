"""Loads state_dicts of the official PyTorch axialnet (csrhddlam/axial-deeplab) into ours.

`load_axialnet_state_dict(model, state_dict)` takes a model built by
`axial_resnet.axial_resnet(name, stem="conv", ...)` (any of the variants; normally the
matching `axial26s` / `axial50s` / `axial50m` / `axial50l`) and a mapping from the
official parameter and buffer names to NumPy arrays (`torch.load(...)` converted with
`.numpy()`, or an `.npz` written from it).

Name mapping (PyTorch → ours):

| PyTorch                                  | ours                                          |
|------------------------------------------|-----------------------------------------------|
| conv1.weight, bn1.*                      | stem/conv/kernel, stem/bn                     |
| layer{s-1}.{i-1}.conv_down.weight, bn1.* | res{s}_block{i}/conv_down, bn1                |
| ….hight_block.*, ….width_block.*         | ….attention.height_attention, width_attention |
| ….conv_up.weight, bn2.*                  | ….conv_up, bn2                                |
| ….downsample.0.weight, downsample.1.*    | ….downsample_conv, downsample_bn              |
| fc.weight, fc.bias                       | logits (only when the model has a classifier) |

BatchNorm `weight, bias, running_mean, running_var` → `gamma, beta, moving_mean,
moving_variance`; `num_batches_tracked` is ignored. Attention layers: `qkv_transform.weight
[2·out, in, 1]` → `qkv_kernel [in, 2·out]` (both keep PT's per-head [q, k, v] channel
order); `bn_similarity` `[3·heads]` → `[3, heads]`; `relative [2·gp, 2k−1]` → our
`[rows, 2·dq + dv]` table with the q and v parts reversed along the offset axis (PT indexes
them by o − p, we by p − o; papers.md §1.4, §6 #1). `flatten_index` buffers are checked
against the table length they imply and otherwise ignored (we index on the fly).

Table lengths: a PT table covers offsets ±(k − 1) for its feature length k. When our layer
has more rows (a fixed `max_global_length` longer than k), the PT table is placed at the
centre and the offsets it never saw start at zero; when it has fewer (a local span m),
the centre m offsets are kept — exactly the ones a span-m layer uses. Pass
`adapt_relative_tables=False` to require equal lengths.
"""
import os

import numpy as np

# Buffers of the PyTorch model that carry no weights.
_IGNORED_SUFFIXES = ("num_batches_tracked",)


def _batch_norm(prefix, layer, reshape=None):
  """(PT name, variable, transform) for the four tensors of a batch norm."""
  def transform(value):
    return value if reshape is None else value.reshape(reshape)
  return [(f"{prefix}.weight", layer.gamma, transform),
          (f"{prefix}.bias", layer.beta, transform),
          (f"{prefix}.running_mean", layer.moving_mean, transform),
          (f"{prefix}.running_var", layer.moving_variance, transform)]


def _conv(name, conv):
  # [out, in, kh, kw] → [kh, kw, in, out]
  return [(name, conv.kernel, lambda value: value.transpose(2, 3, 1, 0))]


def relative_table_from_torch(table, query_depth, rows=None):
  """PT `relative [2·gp, 2k−1]` → our `relative_embeddings [rows, 2·dq + dv]`.

  Args:
    table: the PT parameter; rows [q (dq), k (dq), v (gp)], columns offsets
      (o − p for q and v, p − o for k) from −(k − 1) to k − 1.
    query_depth: per-head query depth dq (gp / 2 in the official model).
    rows: our table length (odd); None keeps 2k − 1. Longer tables are zero-padded
      symmetrically, shorter ones keep the centre offsets.

  Returns:
    `[rows, 2 * dq + gp]` float32 with rows indexed by p − o and columns [r^q, r^k, r^v].
  """
  dq = query_depth
  ours = np.concatenate([table[:dq, ::-1].T, table[dq:2 * dq].T, table[2 * dq:, ::-1].T],
                        axis=1).astype(np.float32)
  if rows is None or rows == ours.shape[0]:
    return ours
  difference = (rows - ours.shape[0]) // 2
  if difference > 0:
    return np.pad(ours, [[difference, difference], [0, 0]])
  return ours[-difference:ours.shape[0] + difference]


def _attention(prefix, layer, adapt_relative_tables):
  rows = layer.relative_embeddings.shape[0]

  def table(value):
    return relative_table_from_torch(value, layer.query_depth,
                                     rows if adapt_relative_tables else None)

  entries = [(f"{prefix}.qkv_transform.weight", layer.qkv_kernel,
              lambda value: value[:, :, 0].T),
             (f"{prefix}.relative", layer.relative_embeddings, table)]
  entries += _batch_norm(f"{prefix}.bn_qkv", layer.qkv_batch_norm)
  entries += _batch_norm(f"{prefix}.bn_similarity", layer.similarity_batch_norm,
                         (3, layer.num_heads))
  entries += _batch_norm(f"{prefix}.bn_output", layer.output_batch_norm)
  return entries


def _block(prefix, block, adapt_relative_tables):
  entries = _conv(f"{prefix}.conv_down.weight", block.conv_down)
  entries += _batch_norm(f"{prefix}.bn1", block.bn1)
  entries += _attention(f"{prefix}.hight_block", block.attention.height_attention,
                        adapt_relative_tables)
  entries += _attention(f"{prefix}.width_block", block.attention.width_attention,
                        adapt_relative_tables)
  entries += _conv(f"{prefix}.conv_up.weight", block.conv_up)
  entries += _batch_norm(f"{prefix}.bn2", block.bn2)
  if block.downsample_conv is not None:
    entries += _conv(f"{prefix}.downsample.0.weight", block.downsample_conv)
    entries += _batch_norm(f"{prefix}.downsample.1", block.downsample_bn)
  return entries


def _layer_or_none(model, name):
  try:
    return model.get_layer(name)
  except ValueError:
    return None


def axialnet_variable_map(model, adapt_relative_tables=True):
  """Maps every official name that `model` can take to (variable, transform).

  Args:
    model: an `axial_resnet(..., stem="conv")` model.
    adapt_relative_tables: see the module docstring.

  Returns:
    A dict PT name → (tf.Variable, function from the PT array to the variable's value).

  Raises:
    ValueError: if the model has no 7×7 conv stem or no `res{stage}_block{i}` layers.
  """
  stem = _layer_or_none(model, "stem")
  if stem is None or not hasattr(stem, "conv") or _layer_or_none(model, "res2_block1") is None:
    raise ValueError(
        f"load_axialnet_state_dict: model {model.name!r} is not an Axial-ResNet with the "
        "conv stem (layers 'stem' and 'res2_block1' expected); the official weights only "
        "exist for axial_resnet(..., stem='conv').")
  entries = _conv("conv1.weight", stem.conv) + _batch_norm("bn1", stem.bn)
  for stage in range(2, 6):
    index = 1
    while (block := _layer_or_none(model, f"res{stage}_block{index}")) is not None:
      prefix = f"layer{stage - 1}.{index - 1}"
      entries += _block(prefix, block, adapt_relative_tables)
      index += 1
  logits = _layer_or_none(model, "logits")
  if logits is not None:
    entries += [("fc.weight", logits.kernel, lambda value: value.T),
                ("fc.bias", logits.bias, lambda value: value)]
  return {name: (variable, transform) for name, variable, transform in entries}


def _flatten_index_problem(name, value, arrays):
  """A k-long PT table has a k·k `flatten_index`; None when consistent."""
  table = arrays.get(name[:-len("flatten_index")] + "relative")
  if table is None:
    return None  # The missing table is reported on its own.
  length = (table.shape[-1] + 1) // 2
  if value.size != length * length:
    return (f"{name}: {value.size} entries, but its relative table "
            f"{tuple(table.shape)} implies {length * length}")
  return None


def load_axialnet_state_dict(model, state_dict, adapt_relative_tables=True):
  """Assigns an official axialnet state_dict to `model` (all weights and BN statistics).

  Args:
    model: a model from `axial_resnet(name, stem="conv", ...)`, built (functional models
      are). With `num_classes=None` the official `fc.*` classifier is skipped.
    state_dict: mapping official name → array (`numpy.ndarray`, or anything with
      `.numpy()` / `__array__`, e.g. torch tensors).
    adapt_relative_tables: let relative tables of a different length be padded or
      cropped (see the module docstring); False requires identical lengths.

  Returns:
    The list of official names that were loaded.

  Raises:
    ValueError: listing every missing, unexpected and mis-shaped name (nothing is
      assigned then).
  """
  targets = axialnet_variable_map(model, adapt_relative_tables)
  has_classifier = "fc.weight" in targets
  arrays = {}
  for name, value in state_dict.items():
    arrays[name] = np.asarray(value.numpy() if hasattr(value, "numpy") else value)
  missing = sorted(set(targets) - set(arrays))
  unexpected, mis_shaped, converted = [], [], {}
  for name, value in arrays.items():
    if name.endswith(_IGNORED_SUFFIXES) or (name.startswith("fc.") and not has_classifier):
      continue
    index_of_known_table = (name.endswith(".flatten_index") and
                            name[:-len("flatten_index")] + "relative" in targets)
    if index_of_known_table:
      problem = _flatten_index_problem(name, value, arrays)
      if problem:
        mis_shaped.append(problem)
      continue
    if name not in targets:
      unexpected.append(name)
      continue
    variable, transform = targets[name]
    try:
      new_value = transform(value)
    except (ValueError, IndexError) as error:
      mis_shaped.append(f"{name}: shape {value.shape} cannot be converted ({error})")
      continue
    if tuple(new_value.shape) != tuple(variable.shape):
      mis_shaped.append(f"{name}: official shape {value.shape} converts to "
                        f"{new_value.shape}, but {variable.name} has shape "
                        f"{tuple(variable.shape)}")
      continue
    converted[name] = (variable, new_value)
  if missing or unexpected or mis_shaped:
    lines = [f"load_axialnet_state_dict: the state_dict does not fit model "
             f"{model.name!r}."]
    for title, names in (("missing", missing), ("unexpected", sorted(unexpected)),
                         ("mis-shaped", mis_shaped)):
      if names:
        lines.append(f"{len(names)} {title}: " + "; ".join(names))
    raise ValueError("\n".join(lines))
  for variable, value in converted.values():
    variable.assign(value.astype(variable.dtype.as_numpy_dtype))
  return sorted(converted)


def _strip_wrappers(state_dict):
  """Unwraps {"state_dict": ...} checkpoints and DataParallel's "module." prefixes."""
  if "state_dict" in state_dict and isinstance(state_dict["state_dict"], dict):
    state_dict = state_dict["state_dict"]
  return {(name[len("module."):] if name.startswith("module.") else name): value
          for name, value in state_dict.items()}


def read_state_dict(path):
  """Reads an official state_dict from a PyTorch `.pth`/`.pt`/`.tar` or a NumPy `.npz`.

  `.npz` files need only NumPy; PyTorch files need `torch` (the `[torch]` extra), which
  is imported here only. Training checkpoints holding `{"state_dict": ...}` and
  DataParallel "module." prefixes are unwrapped.

  Args:
    path: the file.

  Returns:
    A dict official name → `numpy.ndarray`.

  Raises:
    FileNotFoundError: if `path` does not exist.
    ValueError: for another extension, or a PyTorch file without torch installed.
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(f"state_dict file {path!r} does not exist.")
  if path.endswith(".npz"):
    with np.load(path) as archive:
      return _strip_wrappers({name: archive[name] for name in archive.files})
  if not path.endswith((".pth", ".pt", ".tar", ".pth.tar")):
    raise ValueError(f"state_dict file {path!r}: expected a .pth, .pt, .pth.tar or .npz "
                     "file.")
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError as error:
    raise ValueError(
        f"Reading the PyTorch file {path!r} needs torch (pip install "
        "'deeplab_axial[torch]'); alternatively convert it to .npz where torch is "
        "installed: numpy.savez(out, **{k: v.numpy() for k, v in "
        "torch.load(path).items()}).") from error
  loaded = torch.load(path, map_location="cpu", weights_only=True)
  return {name: value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)
          for name, value in _strip_wrappers(loaded).items()}
