"""Argument checks shared by the layers (messages name the argument and the value)."""
from typing import Optional


def check_positive_int(name: str, value, owner: Optional[str] = None) -> None:
  """Raises ValueError unless `value` is an int >= 1 (bool excluded).

  Args:
    name: the argument's name, quoted in the message.
    value: what was passed.
    owner: the layer's name, prefixed to the message when given.
  """
  if isinstance(value, bool) or not isinstance(value, int) or value < 1:
    prefix = f"{owner}: " if owner else ""
    raise ValueError(f"{prefix}`{name}` must be a positive integer, got {value!r}.")
