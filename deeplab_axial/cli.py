r"""The one surface of the command-line tools in trainer/ and data/.

Every tool is written as

    from deeplab_axial import cli
    cli.start_quietly()  # before anything imports TensorFlow
    from absl import flags
    ...                  # flags and imports of the library
    def main(argv): ...
    if __name__ == "__main__":
      cli.run(main)

and so behaves the same way:

- Bad input (`errors.UserError` and its subclasses such as `config.ConfigError` and
  `ConversionError`, and the built-in types in `errors.USER_ERROR_TYPES`, e.g. a missing
  file) prints one line `error: <message>` to stderr and exits with status 2; so does a bad
  or missing flag. Any other exception is a bug and shows its traceback (status 1).
- `--verbose` (or the environment variable DEEPLAB_AXIAL_VERBOSE=1) shows the traceback of
  bad-input errors too, and TensorFlow's start-up and C++ log lines.
- Quiet by default: TensorFlow's C++ start-up notices (oneDNN, CUDA drivers, `cuInit`) and
  the long `input name(s) ...` lines of SavedModel export are hidden; progress (`say`),
  results and real warnings are shown.
- `--help` shows the tool's docstring (usage examples with their line breaks) and its own
  flags, `--verbose` included.
"""
import logging
import os
import sys
import tempfile
import traceback
from typing import Callable, List, Sequence

from absl import app
from absl import flags

from deeplab_axial import errors

VERBOSE_ENV = "DEEPLAB_AXIAL_VERBOSE"
EXIT_USER_ERROR = 2

flags.DEFINE_bool("verbose", False,
                  f"Show tracebacks of input errors and TensorFlow's start-up log lines "
                  f"(also: {VERBOSE_ENV}=1).")

# absl INFO messages of TensorFlow that flood the console without telling the user anything:
# SavedModel export logs every renamed signature input (kilobytes per function).
_NOISY_TENSORFLOW_MESSAGES = ("Function `%s` contains input name(s)",)


def verbose_requested(argv: Sequence[str]) -> bool:
  """Whether `argv` (before flag parsing) or the environment asks for verbose output."""
  verbose = _verbose_in_environment()
  for arg in argv[1:]:
    if arg == "--":
      break
    if arg in ("--verbose", "--verbose=true", "--verbose=1"):
      verbose = True
    elif arg in ("--noverbose", "--verbose=false", "--verbose=0"):
      verbose = False
  return verbose


def _verbose_in_environment() -> bool:
  return os.environ.get(VERBOSE_ENV, "").lower() in ("1", "true", "yes")


def start_quietly(argv: Sequence[str] = None) -> None:
  """Sets up TensorFlow's environment and imports it, hiding its C++ start-up lines.

  Must run before anything imports TensorFlow: its C++ log level is read once, at import.
  Without `--verbose`, only C++ fatal messages remain (the `cuInit ... (303)` line of every
  CPU-only run is an error-level one), and what TensorFlow writes to stderr while it
  loads is dropped unless the import fails.
  """
  argv = sys.argv if argv is None else argv
  os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
  if verbose_requested(argv):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "0")
    return
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  if "tensorflow" not in sys.modules:
    _import_tensorflow_without_stderr()


def _import_tensorflow_without_stderr():
  """Imports TensorFlow with file descriptor 2 captured; replays it if the import fails."""
  sys.stderr.flush()
  saved_stderr = os.dup(2)
  with tempfile.TemporaryFile() as captured:
    os.dup2(captured.fileno(), 2)
    try:
      import tensorflow  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
    except BaseException:
      os.dup2(saved_stderr, 2)
      captured.seek(0)
      sys.stderr.write(captured.read().decode("utf-8", "replace"))
      raise
    finally:
      os.dup2(saved_stderr, 2)
      os.close(saved_stderr)


def say(message: str) -> None:
  """Prints a progress message (stdout, so that stderr holds only problems)."""
  print(message, flush=True)


def is_user_error(error: BaseException) -> bool:
  """Whether `error` reports bad input (one line for the user) rather than a bug."""
  if isinstance(error, errors.USER_ERROR_TYPES):
    return True
  tensorflow = sys.modules.get("tensorflow")
  # tf.train.Checkpoint.read and tf.io raise these for a missing or unreadable user path.
  return tensorflow is not None and isinstance(error, tensorflow.errors.NotFoundError)


def run(main: Callable[[List[str]], None]) -> None:
  """Parses flags and runs `main(argv)` behind the error boundary described above."""
  flags.FLAGS.register_key_flag_for_module(sys.argv[0], flags.FLAGS["verbose"])
  app.run(lambda argv: _run_main(main, argv), flags_parser=_parse_flags)


def _parse_flags(argv):
  try:
    return flags.FLAGS(argv)
  except flags.Error as error:
    _exit_with_error(str(error))


def _run_main(main, argv):
  verbose = flags.FLAGS.verbose or _verbose_in_environment()
  if not verbose:
    logging.getLogger("absl").addFilter(_drop_noisy_tensorflow_messages)
  try:
    main(argv)
  except Exception as error:  # pylint: disable=broad-except
    if not is_user_error(error):
      raise
    if verbose:
      traceback.print_exc()
    _exit_with_error(str(error))


def _drop_noisy_tensorflow_messages(record: logging.LogRecord) -> bool:
  return not (isinstance(record.msg, str) and record.msg.startswith(_NOISY_TENSORFLOW_MESSAGES))


def _exit_with_error(message: str):
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(EXIT_USER_ERROR)
