"""Memory model: predicted activation memory of one training step, before running it.

`estimate_training_memory_bytes(model, batch_size, crop_size)` traces the model's
training step (forward in training mode, a scalar loss over every output, gradients of
the trainable weights) as a graph at the requested per-replica batch and crop — tracing
allocates nothing — and replays the ops the step needs in their creation order
(forward, then the backward in reverse), a valid execution order: every op's outputs are
allocated when it runs and freed after their last consumer has run. The peak of the
live bytes is the prediction. Ops that only re-label a buffer (reshape, identity,
squeeze, ...) allocate nothing and keep their input's buffer alive as long as they are
used; inputs, constants and variable reads (the weights) are not activations and are not
counted. The weights, their gradients' optimizer slots and the TF runtime come on top;
the gradients themselves are counted (they are live at the end of the step).

So users can size a per-replica batch for an accelerator they do not have at hand:
the prediction depends only on the graph, not on this machine. It is for the TF-op
attention that GPUs and TPUs run; float32 training on a CPU with the fused attention
kernel (`deeplab_axial.layers.fused_attention`) keeps less (no softmax weights).
Measured against the peak of TF's CPU allocator during a step (the figure
`tf.config.experimental.get_memory_info` gives for a GPU too) in benchmarks/README.md
("Memory model").
"""
import tensorflow as tf

from deeplab_axial.layers import fused_attention

# Ops whose i-th output shares the buffer of their i-th (or only) input: no allocation,
# and that buffer lives until the alias's last consumer too.
_ALIASING_OPS = frozenset({
    "Reshape", "Identity", "IdentityN", "Squeeze", "ExpandDims", "StopGradient",
    "EnsureShape", "Snapshot", "PreventGradient",
})
# Ops whose outputs are not activations (inputs, constants, the weights).
_NOT_ACTIVATIONS = frozenset({"Placeholder", "Const", "VarHandleOp", "ReadVariableOp"})


def _is_small_without_shape(operation, tensor):
  """Whether `tensor` has no static shape but is known to be tiny.

  Fused batch norm's opaque reserve outputs (and the zeros the gradient makes for them),
  and the axes a broadcasting op's gradient sums over (`BroadcastGradientArgs`: int32
  vectors of at most one entry per dimension, whose length depends on the shapes'
  values, e.g. in the gradient of a batched matmul that broadcasts a table over the
  batch).
  """
  if operation.type == "ZerosLike":
    source = operation.inputs[0]
    return _is_small_without_shape(source.op, source)
  if operation.type == "BroadcastGradientArgs":
    return True
  return operation.type.startswith("FusedBatchNorm") and tensor.value_index >= 3


def _tensor_bytes(tensor):
  num_elements = tensor.shape.num_elements()
  if num_elements is None or tensor.dtype in (tf.resource, tf.variant, tf.string):
    return 0
  return num_elements * tensor.dtype.size


def _needed_operations(graph):
  """The ops a run of `graph` executes: for a function graph, those its outputs and
  control outputs (state updates) depend on; ops nothing needs are pruned by TF's
  runtime (e.g. the zeros autodiff makes for gradients that are never used)."""
  operations = graph.get_operations()
  if not hasattr(graph, "outputs"):
    return operations
  needed = set()
  pending = [t.op for t in graph.outputs] + list(graph.control_outputs)
  while pending:
    operation = pending.pop()
    if operation in needed:
      continue
    needed.add(operation)
    pending.extend(t.op for t in operation.inputs)
    pending.extend(operation.control_inputs)
  return [operation for operation in operations if operation in needed]


def peak_live_bytes(graph):
  """Peak bytes of tensors alive at once when `graph`'s ops run in creation order.

  Only the ops the graph's outputs need run (see `_needed_operations`). An output that
  nothing consumes is freed as soon as its op has run, unless it is a graph output.

  Args:
    graph: a `tf.Graph` (e.g. a concrete function's graph) with static shapes.

  Returns:
    (peak bytes, number of op outputs whose size was unknown and counted as 0).
  """
  operations = _needed_operations(graph)
  results = {t.ref() for t in getattr(graph, "outputs", [])}
  buffer_of = {}  # tensor -> the tensor that allocated its buffer
  for operation in operations:
    for index, tensor in enumerate(operation.outputs):
      source = tensor
      if operation.type in _ALIASING_OPS and operation.inputs:
        source = buffer_of[operation.inputs[min(index, len(operation.inputs) - 1)].ref()]
      buffer_of[tensor.ref()] = source
  last_use = {}
  for index, operation in enumerate(operations):
    for tensor in operation.inputs:
      last_use[buffer_of[tensor.ref()].ref()] = index
  for tensor in results:
    last_use[buffer_of[tensor].ref()] = len(operations)
  live, peak, unknown = 0, 0, 0
  frees = {}
  for index, operation in enumerate(operations):
    if operation.type not in _ALIASING_OPS | _NOT_ACTIVATIONS:
      for tensor in operation.outputs:
        size = _tensor_bytes(tensor)
        if tensor.shape.num_elements() is None and not _is_small_without_shape(operation, tensor):
          unknown += 1
        if size:
          live += size
          frees.setdefault(last_use.get(tensor.ref(), index), []).append(size)
    peak = max(peak, live)
    live -= sum(frees.pop(index, []))
  return peak, unknown


def estimate_training_memory_bytes(model, batch_size, crop_size, channels=3,
                                   dtype=tf.float32):
  """Predicted activation memory (bytes) of one training step of `model`.

  Args:
    model: a built `tf_keras` model taking `[batch, height, width, channels]` images
      (any outputs: the surrogate loss sums every output, so every output branch gets
      a gradient, as in a real multi-head loss).
    batch_size: images per replica.
    crop_size: (height, width) or an int for a square crop.
    channels: input channels.
    dtype: input dtype.

  Returns:
    Python int: peak bytes of the tensors a training step keeps alive at once (forward
    activations saved for the backward plus the backward's temporaries and the weight
    gradients), excluding weights, optimizer slots and runtime overhead.

  Raises:
    ValueError: a bad batch or crop size, or a graph whose tensor sizes stay unknown at
      this input size (the estimate would silently miss them).
  """
  if isinstance(crop_size, int):
    crop_size = (crop_size, crop_size)
  sizes = [batch_size, *crop_size, channels]
  if any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in sizes):
    raise ValueError(f"estimate_training_memory_bytes needs positive int batch_size, "
                     f"crop_size and channels, got {batch_size!r}, {crop_size!r}, "
                     f"{channels!r}")

  peak, unknown = training_step_peak_bytes(model, batch_size, crop_size, channels, dtype)
  if unknown:
    raise ValueError(f"{unknown} tensors of {model.name}'s training graph have no static "
                     f"size at input {sizes}; the memory estimate needs static shapes")
  return int(peak)


def training_step_peak_bytes(model, batch_size, crop_size, channels=3, dtype=tf.float32):
  """(peak live bytes, tensors of unknown size counted as 0) of `model`'s training step.

  The replay behind `estimate_training_memory_bytes`, for callers that can use a lower
  bound when a few tensors (e.g. of a dynamically sized resize) have no static size.
  Arguments as `estimate_training_memory_bytes` (validated there), except that
  `crop_size` is a (height, width) pair.
  """

  @tf.function
  def training_step(images):
    with tf.GradientTape() as tape:
      outputs = tf.nest.flatten(model(images, training=True))
      loss = tf.add_n([tf.reduce_sum(tf.cast(output, tf.float32)) for output in outputs])
    return tape.gradient(loss, model.trainable_variables)

  spec = tf.TensorSpec([batch_size, *crop_size, channels], dtype)
  with fused_attention.tf_ops_only():  # the attention GPUs and TPUs run
    graph = training_step.get_concrete_function(spec).graph
  return peak_live_bytes(graph)
