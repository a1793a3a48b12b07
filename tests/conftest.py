"""Test-wide setup: 8 host devices for mesh tests, CPU only, quiet TensorFlow, one compilation cache.

XLA_FLAGS must be set before jax is imported anywhere, which is why this lives in the root conftest.

Many tests compile the same small programs (in this process, in the other xdist worker, and in the training
subprocesses they start), so the session shares one persistent JAX compilation cache, created fresh for each
pytest run (the controller creates it; xdist workers and subprocesses inherit the variable) and removed at exit.
It only saves compile time: a cached executable is the one the compiler would have produced.
"""

import atexit
import os
import shutil
import tempfile
import typing

# Unoptimized CPU code generation: the tests' programs are small and compiled once or twice each, so LLVM's
# optimizations cost more than they save (a third of a typical step test's time). Benchmarks and the README
# commands run with XLA's defaults. Subprocesses started by tests keep these flags (the multi-process tests change
# only the device count), except those that run a command as a user does (tests/test_main.py's `_command_line`,
# `quickstart_run`): they start with XLA's defaults.
_flags = os.environ.get("XLA_FLAGS", "").split()
_TEST_ONLY_FLAGS = ("--xla_force_host_platform_device_count=8", "--xla_backend_optimization_level=0")
for _flag in _TEST_ONLY_FLAGS:
  if _flag not in _flags:  # xdist workers inherit the controller's flags
    _flags.append(_flag)
os.environ["XLA_FLAGS"] = " ".join(_flags)
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")  # TensorFlow must never claim an accelerator in tests.

if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _cache = tempfile.mkdtemp(prefix="glm_jax_test_jit_cache_")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
  atexit.register(shutil.rmtree, _cache, ignore_errors=True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")


import pytest  # noqa: E402  (after the flags above: importing pytest plugins must not import jax first)


@pytest.fixture
def default_vocabulary_glm():
  """A factory (seed, max_length) -> (the default vocabulary, a random one-layer GLM over it, its params)."""

  def make(seed: int, max_length: int):
    import jax
    import numpy as np

    from glm_jax.data import vocab
    from glm_jax.model import GLM, GLMConfig

    vocabulary = vocab.default_vocabulary()
    config = GLMConfig(
      vocab_size=vocabulary.vocab_size, num_layers=1, hidden_size=32, num_heads=4, max_length=max_length
    )
    model = GLM(config)
    ids = np.zeros((1, 8), np.int32)
    return vocabulary, model, model.init(jax.random.key(seed), ids, ids, ids, sep=np.array([8]))["params"]

  return make


@pytest.fixture
def fake_bucket(tmp_path, monkeypatch):
  """gs://bucket/... served from tmp_path/bucket: epath's gs:// backend (TensorFlow's gfile) mapped to local files."""
  from etils.epath import backend

  bucket = tmp_path / "bucket"
  bucket.mkdir()

  def local(path):
    path = os.fspath(path)
    assert path.startswith("gs://bucket/"), path
    return str(bucket / path[len("gs://bucket/") :])

  for name in ("open", "exists", "isdir", "makedirs", "mkdir", "listdir", "glob", "remove", "rename", "stat"):
    fn = getattr(backend.os_backend, name)
    monkeypatch.setattr(backend.tf_backend, name, lambda path, *a, fn=fn, **k: fn(local(path), *a, **k))
  return bucket


@pytest.fixture
def empty_gin_config():
  """An empty gin config before and after the test (gin's registry is process-wide)."""
  import gin

  gin.clear_config()
  yield
  gin.clear_config()


@pytest.fixture
def two_processes(tmp_path):
  """run(script, args_of) starts `python script *args_of(coordinator, p)` for p = 0, 1: 2 processes on localhost
  with 2 CPU devices each, a free coordinator port, the repo importable; waits (timeout_s) and fails with the
  children's log tails unless both exit 0. Their logs are tmp_path/child.<p>.log."""
  import pathlib
  import socket
  import subprocess
  import sys

  repo = pathlib.Path(__file__).resolve().parents[1]

  def run(script, args_of, timeout_s: float = 300) -> None:
    with socket.socket() as s:
      s.bind(("127.0.0.1", 0))
      coordinator = f"127.0.0.1:{s.getsockname()[1]}"
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if "xla_force_host_platform_device_count" not in f]
    env = {k: v for k, v in os.environ.items() if not k.startswith("GLM_JAX_")}
    env.update(
      XLA_FLAGS=" ".join([*flags, "--xla_force_host_platform_device_count=2"]),
      JAX_PLATFORMS="cpu",
      TF_CPP_MIN_LOG_LEVEL="2",
      PYTHONPATH=os.pathsep.join(filter(None, [str(repo), env.get("PYTHONPATH")])),
    )
    paths = [tmp_path / f"child.{p}.log" for p in range(2)]
    logs = [open(path, "w") for path in paths]
    children = [
      subprocess.Popen(
        [sys.executable, str(script), *args_of(coordinator, p)],
        cwd=repo,
        env=env,
        stdout=logs[p],
        stderr=subprocess.STDOUT,
      )  # fmt: skip
      for p in range(2)
    ]
    try:
      codes = [c.wait(timeout=timeout_s) for c in children]
    finally:
      for c in children:
        if c.poll() is None:
          c.kill()
      for log in logs:
        log.close()
    assert codes == [0, 0], "\n".join(path.read_text()[-3000:] for path in paths)

  return run


# The quickstart's recipe (gin/pretrain/quickstart.gin) shortened to under a minute of training: rows of 64 tokens,
# QUICKSTART_STEPS steps at a higher learning rate. The README's 800 steps get about four in five quiz blanks right.
QUICKSTART_STEPS = 400
QUICKSTART_FLAGS = (
  "--gin.TrainConfig.length=64",
  "--gin.model_preset.overrides={'max_length': 64}",
  "--gin.OptimizerConfig.learning_rate=3e-3",
  "--gin.OptimizerConfig.warmup_steps=20",
  f"--gin.TrainConfig.eval_every={QUICKSTART_STEPS // 2}",
  f"--gin.TrainConfig.checkpoint_every={QUICKSTART_STEPS // 2}",
)


class QuickstartRun(typing.NamedTuple):
  model_dir: str
  steps: int
  flags: tuple[str, ...]
  stdout: list[str]  # the command's output as a terminal shows it, a line each (the progress bar redraws with "\r")
  stderr: list[str]


@pytest.fixture(scope="session")
def quickstart_run(tmp_path_factory) -> QuickstartRun:
  """The shortened quickstart, trained once per test session and shared by the tests that need a trained model or
  the README command's output (tests/test_main.py, the quickstart notebook's test): xdist workers meet under the
  parent of their base temps, where the first one trains while the other waits on a lock. It runs as a user runs
  the README's command: `python -m glm_jax.main train` in its own process, on one CPU device with XLA's
  optimizations (with the tests' unoptimized code generation, 350 of its steps took 88 s instead of 50 s), without
  the tests' TF_CPP_MIN_LOG_LEVEL. Tests read it; one that would write into it works on a copy."""
  import pathlib
  import subprocess
  import sys

  from glm_jax.data import file_lock
  from glm_jax.train import checkpoints

  root = tmp_path_factory.getbasetemp()
  if os.environ.get("PYTEST_XDIST_WORKER"):
    root = root.parent
  run, out, err = (root / f"quickstart-short{suffix}" for suffix in ("", ".stdout", ".stderr"))
  with file_lock(str(root / "quickstart-short.lock")):
    if checkpoints.latest_step(str(run)) != QUICKSTART_STEPS or not err.exists():
      shutil.rmtree(run, ignore_errors=True)
      env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
      env["XLA_FLAGS"] = " ".join(f for f in _flags if f not in _TEST_ONLY_FLAGS)
      argv = ["train", "--gin_file=gin/pretrain/quickstart.gin", f"--model_dir={run}",
              f"--gin.TrainConfig.num_steps={QUICKSTART_STEPS}", *QUICKSTART_FLAGS]  # fmt: skip
      done = subprocess.run([sys.executable, "-m", "glm_jax.main", *argv], cwd=pathlib.Path(__file__).parents[1],
                            env=env, capture_output=True, text=True, timeout=900)  # fmt: skip
      assert done.returncode == 0, done.stderr[-3000:]
      out.write_text(done.stdout)
      err.write_text(done.stderr)
  lines = [path.read_text().split("\n")[:-1] for path in (out, err)]
  return QuickstartRun(str(run), QUICKSTART_STEPS, QUICKSTART_FLAGS, *lines)
