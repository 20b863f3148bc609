"""Console progress: the one H:MM:SS duration format and the one progress bar.

Used by the converters, `predict_images` and the training loop's progress line. Progress
goes to stdout; stderr is left for warnings and errors (see `deeplab_axial.cli`).
"""
import sys
import threading
import time
from typing import Optional, TextIO


def format_duration(seconds: float) -> str:
  """Formats seconds as H:MM:SS (negative as 0; infinite, i.e. unknown, as --:--:--)."""
  if seconds == float("inf"):
    return "--:--:--"
  seconds = int(round(max(seconds, 0.0)))
  return f"{seconds // 3600:d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class ProgressBar:
  """A thread-safe one-line progress bar: done/total, percentage, rate, elapsed and ETA.

  Redrawn in place (carriage return) at most every `min_interval` seconds and when done;
  `close()` ends the line.
  """

  def __init__(self, total: int, description: str, *, unit: str = "ex",
               stream: Optional[TextIO] = None, min_interval: float = 0.5):
    self._total = total
    self._description = description
    self._unit = unit
    self._stream = stream if stream is not None else sys.stdout
    self._min_interval = min_interval
    self._done = 0
    self._start = time.monotonic()
    self._last_draw = 0.0
    self._lock = threading.Lock()

  def update(self, count: int = 1) -> None:
    with self._lock:
      self._done += count
      now = time.monotonic()
      if now - self._last_draw >= self._min_interval or self._done >= self._total:
        self._last_draw = now
        self._draw(now)

  def close(self) -> None:
    with self._lock:
      self._draw(time.monotonic())
      self._stream.write("\n")
      self._stream.flush()

  def _draw(self, now: float) -> None:
    elapsed = max(now - self._start, 1e-9)
    rate = self._done / elapsed
    remaining = (self._total - self._done) / rate if rate > 0 else float("inf")
    percent = 100.0 * self._done / self._total if self._total else 100.0
    self._stream.write(f"\r{self._description}: {self._done}/{self._total} "
                       f"({percent:5.1f}%) {rate:7.1f} {self._unit}/s "
                       f"elapsed {format_duration(elapsed)} ETA {format_duration(remaining)}")
    self._stream.flush()
