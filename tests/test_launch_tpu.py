"""launch_tpu.sh: argument checking and the gcloud commands it would run (--dry_run; no gcloud needed)."""

from __future__ import annotations

import pathlib
import subprocess

REPO = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = REPO / "launch_tpu.sh"


def launch(*args):
  return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, cwd=REPO)


def test_dry_run_creates_copies_installs_and_trains_on_every_worker():
  result = launch(
    "--name",
    "glm-test",
    "--zone",
    "us-central2-b",
    "--accelerator",
    "v4-32",
    "--gin_file",
    "pyproject.toml",
    "--model_dir",
    "gs://bucket/run",
    "--gin.TrainConfig.num_steps=7",
    "--dry_run",
  )
  assert result.returncode == 0, result.stderr
  lines = result.stdout.splitlines()
  assert lines[0].startswith("gcloud compute tpus tpu-vm create glm-test")
  assert "--accelerator-type v4-32" in lines[0]
  ssh = [line for line in lines if " ssh " in line]
  assert len(ssh) == 2 and all("--worker=all" in line for line in ssh)
  assert "jax\\[tpu\\]" in ssh[0]
  assert "glm_jax.main\\ train" in ssh[1]
  # A Python pyproject.toml accepts (TPU VM images ship 3.10), checked on the worker, and used to train.
  assert "uv\\ venv\\ --allow-existing\\ --python\\ 3.11\\ .venv" in ssh[0]
  assert "sys.version_info\\[:2\\]\\ ==\\ \\(3\\,\\ 11\\)" in ssh[0]
  assert ".venv/bin/python\\ -m\\ glm_jax.main\\ train" in ssh[1] and "python3" not in result.stdout
  assert "--gin.TrainConfig.num_steps=7" in ssh[1]
  assert "gs://bucket/run" in ssh[1]


def test_reuse_skips_creation():
  result = launch(
    "--name", "n", "--zone", "z", "--gin_file", "pyproject.toml", "--model_dir", "d", "--reuse", "--dry_run"
  )
  assert result.returncode == 0, result.stderr
  assert " create " not in result.stdout


def test_missing_arguments_are_named():
  result = launch("--name", "n")
  assert result.returncode == 2
  assert "--zone" in result.stderr and "--gin_file" in result.stderr and "--model_dir" in result.stderr


def test_unknown_argument_and_missing_gin_file_fail_clearly():
  assert "unknown argument '--bogus'" in launch("--bogus").stderr
  result = launch("--name", "n", "--zone", "z", "--gin_file", "gin/nope.gin", "--model_dir", "d", "--dry_run")
  assert result.returncode == 2 and "gin/nope.gin" in result.stderr


def _worker_command(line: str) -> str:
  """The --command of a printed (shell-quoted) gcloud ssh line, unquoted."""
  import shlex

  words = shlex.split(line)
  return words[words.index("--command") + 1]


def test_the_archive_is_private_and_removed_and_the_worker_setup_is_valid_shell(tmp_path):
  import re

  args = ["--name", "n", "--zone", "z", "--gin_file", "pyproject.toml", "--model_dir", "d", "--reuse", "--dry_run"]
  result = subprocess.run(
    ["bash", str(SCRIPT), *args], capture_output=True, text=True, cwd=REPO, env={"PATH": "/usr/bin:/bin",
                                                                                  "TMPDIR": str(tmp_path)},
  )  # fmt: skip
  assert result.returncode == 0, result.stderr
  archive = re.search(r"tar -czf (\S+) ", result.stdout).group(1)
  assert archive.startswith(str(tmp_path / "glm_jax_launch.")) and not archive.endswith("_n.tar.gz")  # mktemp
  assert list(tmp_path.iterdir()) == []  # removed on exit
  setup = _worker_command(next(line for line in result.stdout.splitlines() if " ssh " in line))
  checked = subprocess.run(["bash", "-n", "-c", setup], capture_output=True, text=True)
  assert checked.returncode == 0, checked.stderr
  assert "rm -f ~/glm_jax.tar.gz" in setup
