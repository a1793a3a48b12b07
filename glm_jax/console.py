"""What a command prints: quiet start-up, the log levels, and command-line errors in one line.

- TensorFlow (the data pipeline's) writes start-up lines from C++ straight to the process's stderr while it is
  imported and when it first looks for GPUs (oneDNN, CUDA drivers, cuInit); `quiet_startup` imports it with
  stderr set aside (shown if the import fails) and hides every GPU from TensorFlow, which only feeds data: the
  accelerators are JAX's.
- `configure_logging`: library logging (orbax, absl, jax, TensorFlow) at WARNING, glm_jax's own at INFO; -v shows
  every library's INFO lines and tracebacks, -vv DEBUG.
- `reporting`: a command-line error (a bad gin binding, a missing checkpoint or file, a bad value) is one line
  `error: ...` on stderr and exit status 2; a diverged run (FloatingPointError) one line and status 1; with -v the
  traceback instead.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
from collections.abc import Iterator, Sequence

# Errors of what the command was given: bindings, paths, values. Anything else is a bug and keeps its traceback.
USAGE_ERRORS = (ValueError, KeyError, OSError, SyntaxError)
_LIBRARY_LOGGERS = ("absl", "orbax", "jax", "tensorflow", "etils", "clu", "seqio", "tfds")


def verbosity(argv: Sequence[str]) -> int:
  """The -v count of a command line (`-v`, `-vv`, `--verbosity=N`), read before argparse runs."""
  level = 0
  for arg in argv:
    if arg == "--":
      break
    if arg.startswith("--verbosity="):
      level = int(arg.split("=", 1)[1] or 0)
    elif arg.startswith("-v") and set(arg[1:]) == {"v"}:
      level += len(arg) - 1
  return level


def quiet_startup(level: int = 0) -> None:
  """Imports TensorFlow without its C++ start-up lines (unless `level` > 0) and hides the GPUs from it."""
  if level > 0:
    _import_tensorflow()
    return
  saved = os.dup(2)
  with tempfile.TemporaryFile() as captured:
    os.dup2(captured.fileno(), 2)
    try:
      _import_tensorflow()
    except BaseException:
      os.dup2(saved, 2)
      captured.seek(0)
      sys.stderr.write(captured.read().decode(errors="replace"))
      raise
    finally:
      os.dup2(saved, 2)
      os.close(saved)


def _import_tensorflow() -> None:
  import tensorflow as tf

  tf.config.set_visible_devices([], "GPU")


class _Stderr(logging.StreamHandler):
  """A handler that writes to whatever sys.stderr is when a record comes (notebooks and tests replace it)."""

  @property
  def stream(self):
    return sys.stderr

  @stream.setter
  def stream(self, value):
    del value


class _Formatter(logging.Formatter):
  def format(self, record: logging.LogRecord) -> str:
    message = super().format(record)
    if record.levelno >= logging.WARNING:
      return f"{record.levelname.lower()}: {message}"
    return message


def configure_logging(level: int = 0) -> None:
  """Log levels for a command: glm_jax at INFO (DEBUG from -vv), libraries at WARNING (INFO from -v)."""
  handler = _Stderr()
  if level > 0:
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
  else:
    handler.setFormatter(_Formatter("%(message)s"))
  logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)
  libraries = logging.WARNING if level == 0 else logging.INFO if level == 1 else logging.DEBUG
  logging.getLogger().setLevel(libraries)
  for name in _LIBRARY_LOGGERS:
    logging.getLogger(name).setLevel(libraries)
  logging.getLogger("glm_jax").setLevel(logging.DEBUG if level > 1 else logging.INFO)


def _first_line(error: BaseException) -> str:
  message = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
  lines = [line.strip() for line in str(message).splitlines() if line.strip()]
  return lines[0] if lines else type(error).__name__


@contextlib.contextmanager
def reporting(level: int = 0) -> Iterator[None]:
  """Turns command-line errors into one `error: ...` line and an exit status (see the module docstring)."""
  try:
    yield
  except (*USAGE_ERRORS, FloatingPointError) as error:
    if level > 0:
      raise
    print(f"error: {_first_line(error)}", file=sys.stderr)
    raise SystemExit(1 if isinstance(error, FloatingPointError) else 2) from None
