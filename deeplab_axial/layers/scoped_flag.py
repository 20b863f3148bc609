"""A per-thread flag that is set inside (nestable) `with flag.scope():` blocks."""
import contextlib
import threading


class ScopedFlag(threading.local):
  """Set while the current thread is inside at least one `scope()` block.

  Layers read such flags while a step is traced (e.g. "recomputing, keep the moving
  statistics", "trace only stock TF ops"), so they are per thread, like tracing.
  """

  def __init__(self):
    super().__init__()
    self._depth = 0

  def is_set(self):
    return self._depth > 0

  @contextlib.contextmanager
  def scope(self):
    self._depth += 1
    try:
      yield
    finally:
      self._depth -= 1
