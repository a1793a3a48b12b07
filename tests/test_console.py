"""What a command prints: -v counting, one-line errors with their exit status, and the log levels."""

import contextlib
import io
import logging

import pytest

from glm_jax import console


def test_verbosity_is_read_from_the_command_line():
  assert console.verbosity(["train", "--model_dir=x"]) == 0
  assert console.verbosity(["train", "-v"]) == 1 and console.verbosity(["-vv", "infer"]) == 2
  assert console.verbosity(["--verbosity=3"]) == 3 and console.verbosity(["--", "-v"]) == 0
  assert console.verbosity(["--vocab_size=8"]) == 0


@pytest.mark.parametrize(
  "error, status",
  [
    (ValueError("bad value\n  In bindings string line 1"), 2),
    (FileNotFoundError("no file"), 2),
    (FloatingPointError("nan"), 1),
  ],
)
def test_command_line_errors_are_one_line_and_an_exit_status(capsys, error, status):
  with pytest.raises(SystemExit) as exit_info, console.reporting(0):
    raise error
  assert exit_info.value.code == status
  assert capsys.readouterr().err == f"error: {str(error).splitlines()[0]}\n"


def test_with_v_the_error_keeps_its_traceback_and_bugs_always_do():
  with pytest.raises(ValueError), console.reporting(1):
    raise ValueError("shown with its traceback")
  with pytest.raises(ZeroDivisionError), console.reporting(0):
    raise ZeroDivisionError("a bug")
  with pytest.raises(SystemExit), console.reporting(0):
    raise KeyError("'[sop]' is not in the vocabulary")


def test_libraries_log_warnings_and_glm_jax_its_progress():
  try:
    console.configure_logging(0)
    assert not logging.getLogger("absl").isEnabledFor(logging.INFO)
    assert not logging.getLogger("orbax.checkpoint").isEnabledFor(logging.INFO)
    assert logging.getLogger("glm_jax.train.loop").isEnabledFor(logging.INFO)
    written = io.StringIO()
    with contextlib.redirect_stderr(written):  # the stream of the moment (a notebook's, a test's)
      logging.getLogger("glm_jax.train.loop").info("restored step %d", 3)
      logging.getLogger("glm_jax.train.loop").warning("preempted")
    assert written.getvalue() == "restored step 3\nwarning: preempted\n"
    console.configure_logging(1)
    assert logging.getLogger("absl").isEnabledFor(logging.INFO)
  finally:
    logging.basicConfig(level=logging.WARNING, force=True)
    for name in (*console._LIBRARY_LOGGERS, "glm_jax"):
      logging.getLogger(name).setLevel(logging.NOTSET)
