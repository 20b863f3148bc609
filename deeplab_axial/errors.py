"""The base class of errors caused by the user's input rather than by a bug.

Library functions raise a subclass (`config.ConfigError`, `converters.common.ConversionError`,
`training.loop.TrainingDivergedError`, ...) or one of the built-in exceptions listed in
`USER_ERROR_TYPES` with a message that names the file, field or value and what was
expected. Command-line tools (`deeplab_axial.cli`) print such errors as one line
`error: <message>` and exit with status 2; any other exception is a bug and keeps its
traceback.
"""


class UserError(Exception):
  """Bad input (file, flag, config value, dataset); the message says what to fix."""


# Bad input raised as built-in types: ValueError is the library's documented error for an
# invalid argument or file content, the OSErrors are about paths the user passed.
USER_ERROR_TYPES = (UserError, ValueError, FileNotFoundError, FileExistsError,
                    NotADirectoryError, IsADirectoryError)
