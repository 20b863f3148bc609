"""Which config fields a run reads: no setting of a config is silently ignored.

`ReadTracker.wrap(config)` returns a `TrackedMessage`: it behaves like the
`ExperimentOptions` proto for the code that consumes a config (attribute access, repeated
fields, `HasField`, sub-messages) and records the dotted path of every field read.
`set_but_unread(config, tracker)` then lists the fields the config sets that nothing read,
and `check_all_read` turns them into one `UnreadConfigError` line naming the fields.

    tracker = config_usage.ReadTracker()
    tracked = tracker.wrap(config)
    ...build everything the run builds from `tracked`...
    config_usage.check_all_read(config, tracker, mode="train_and_eval")

What counts as read: a scalar or repeated field whose value was taken (`getattr`), or a
field asked about with `HasField`. Reaching a sub-message (`config.model`) reads nothing
by itself. What counts as set: a singular field present in the proto (`HasField`), a
non-empty repeated field unless it holds exactly the default `load_config` fills in
(those are not the user's settings).

Code that needs the real proto (text format, copying) calls `unwrap`, which reads nothing.
"""
from typing import Iterator, List, Set, Tuple

from deeplab_axial import errors


class UnreadConfigError(errors.UserError, ValueError):
  """A config sets fields that nothing in the run reads."""


class ReadTracker:
  """The set of dotted field paths (`"dataset.crop_size"`) read through its wrappers."""

  def __init__(self):
    self.read_paths: Set[str] = set()

  def wrap(self, message) -> "TrackedMessage":
    """`message` (a proto) seen through this tracker, paths relative to its root."""
    return TrackedMessage(message, self, "")

  def record(self, path: str):
    self.read_paths.add(path)


class TrackedMessage:
  """A proto message that records the fields read from it (see the module docstring).

  Args:
    message: the proto message wrapped.
    tracker: the `ReadTracker` that records the reads.
    prefix: dotted path of `message` from the root, with a trailing "." (or "").
  """

  __slots__ = ("_message", "_tracker", "_prefix")

  def __init__(self, message, tracker: ReadTracker, prefix: str):
    object.__setattr__(self, "_message", message)
    object.__setattr__(self, "_tracker", tracker)
    object.__setattr__(self, "_prefix", prefix)

  def __getattr__(self, name):
    value = getattr(self._message, name)
    field = self._message.DESCRIPTOR.fields_by_name.get(name)
    if field is None:  # a method or other proto attribute
      return value
    path = self._prefix + name
    if field.message_type is not None and not field.is_repeated:
      return TrackedMessage(value, self._tracker, path + ".")
    self._tracker.record(path)
    return value

  def __setattr__(self, name, value):
    raise AttributeError(f"{self._prefix}{name}: a tracked config is read-only; change the "
                         "config before wrapping it")

  def HasField(self, name):  # pylint: disable=invalid-name
    self._tracker.record(self._prefix + name)
    return self._message.HasField(name)

  def __eq__(self, other):
    return unwrap(self) == unwrap(other)

  def __hash__(self):
    raise TypeError("unhashable type: 'TrackedMessage'")

  def __repr__(self):
    return f"TrackedMessage({self._prefix or '<root>'}: {self._message!r})"


def unwrap(message):
  """The proto behind a `TrackedMessage` (reads nothing); other values unchanged."""
  if isinstance(message, TrackedMessage):
    return object.__getattribute__(message, "_message")
  return message


def set_fields(config, is_loader_default=lambda path, value: False
               ) -> Iterator[Tuple[str, object]]:
  """(dotted path, value) of every leaf field `config` sets, recursively.

  Args:
    config: a proto message (or a `TrackedMessage`; read without recording).
    is_loader_default: (path, list) -> True for a repeated field holding the default that
      the loader filled in (see `deeplab_axial.config.is_filled_default`).
  """
  yield from _set_fields(unwrap(config), "", is_loader_default)


def _set_fields(message, prefix, is_loader_default):
  for field, value in message.ListFields():
    path = prefix + field.name
    if field.message_type is not None and not field.is_repeated:
      yield from _set_fields(value, path + ".", is_loader_default)
    elif not (field.is_repeated and is_loader_default(path, list(value))):
      yield path, value


def set_but_unread(config, tracker: ReadTracker, is_loader_default=None) -> List[str]:
  """Sorted dotted paths of the fields `config` sets that `tracker` never saw read.

  Args:
    config: the `ExperimentOptions` (or any proto) whose reads `tracker` recorded.
    tracker: the `ReadTracker` that wrapped it.
    is_loader_default: see `set_fields`; default: `config.is_filled_default` (the
      repeated-field defaults of `load_config`).
  """
  if is_loader_default is None:
    from deeplab_axial import config as config_lib  # pylint: disable=import-outside-toplevel
    is_loader_default = lambda path, value: config_lib.is_filled_default(
        unwrap(config), path, value)
  return sorted(path for path, _ in set_fields(config, is_loader_default)
                if path not in tracker.read_paths)


def check_all_read(config, tracker: ReadTracker, mode: str) -> None:
  """Raises `UnreadConfigError` (one line) when `config` sets fields nothing read.

  Call it after everything `mode` runs was built from `tracker.wrap(config)`.
  """
  unread = set_but_unread(config, tracker)
  if not unread:
    return
  fields = ", ".join(unread)
  meta = unwrap(config).model.meta_architecture
  plural = "s" if len(unread) > 1 else ""
  verb = "are" if len(unread) > 1 else "is"
  pronoun = "them" if len(unread) > 1 else "it"
  raise UnreadConfigError(
      f"config field{plural} {fields} {verb} set but nothing in mode {mode!r} reads "
      f"{pronoun} for meta_architecture {meta!r}; remove {pronoun}")


__all__ = ["ReadTracker", "TrackedMessage", "UnreadConfigError", "check_all_read",
           "set_but_unread", "set_fields", "unwrap"]
