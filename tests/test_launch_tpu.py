"""launch_tpu.sh: argument checking and the gcloud commands it would run (--dry_run; no gcloud needed)."""

from __future__ import annotations

import pathlib
import re
import shlex
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


# Subcommands, each in dry-run: the gcloud commands they print.

TRAIN_ARGS = ("--gin_file", "pyproject.toml", "--model_dir", "gs://bucket/run", "--gin.TrainConfig.num_steps=7")


def commands(stdout: str) -> list[list[str]]:
  """The printed commands of a dry run, as words (babysit's `#` lines, which say when each part runs, left out)."""
  return [shlex.split(line) for line in stdout.splitlines() if line and not line.startswith("#")]


def dry(*args) -> list[list[str]]:
  result = launch(*args, "--dry_run")
  assert result.returncode == 0, result.stderr
  return commands(result.stdout)


def ssh_command(words: list[str]) -> str:
  return words[words.index("--command") + 1]


def test_create_prints_the_vm_creation_only():
  [create] = dry("create", "--name", "n", "--zone", "z", "--accelerator", "v4-32", "--spot", "--project", "p")
  assert create == ["gcloud", "compute", "tpus", "tpu-vm", "create", "n", "--zone", "z", "--project", "p",
                    "--accelerator-type", "v4-32", "--version", "tpu-ubuntu2204-base", "--spot"]  # fmt: skip


def test_create_queued_makes_a_queued_resource_and_polls_its_state():
  create, describe = dry("create", "--name", "n", "--zone", "z", "--queued", "--version", "v2-alpha-tpuv5")
  assert create == ["gcloud", "compute", "tpus", "queued-resources", "create", "n", "--node-id", "n", "--zone", "z",
                    "--accelerator-type", "v4-8", "--runtime-version", "v2-alpha-tpuv5"]  # fmt: skip
  assert describe == ["gcloud", "compute", "tpus", "queued-resources", "describe", "n", "--zone", "z",
                      "--format=value(state.state)"]  # fmt: skip
  [spot, _] = dry("create", "--name", "n", "--zone", "z", "--queued", "--spot")
  assert spot[-1] == "--spot"


def test_run_copies_sets_up_and_trains_without_creating():
  lines = dry("run", "--name", "n", "--zone", "z", *TRAIN_ARGS)
  assert [words[0] if words[0] == "tar" else words[4] for words in lines] == ["tar", "scp", "ssh", "ssh"]
  assert all("--worker=all" in words for words in lines[1:])
  train = ssh_command(lines[3])
  assert "--model_dir=gs://bucket/run" in train and "--gin.TrainConfig.num_steps=7" in train
  assert "> ~/glm_jax_train.log 2>&1 &" in train
  assert {"--exclude=.git", "--exclude=.venv", "--exclude=.deviceless"} <= set(lines[0])  # not GiBs to every worker
  result = launch("run", "--name", "n", "--zone", "z", "--dry_run")
  assert result.returncode == 2 and "missing required --gin_file --model_dir" in result.stderr


def test_status_describes_the_vm_and_asks_worker_0_for_the_last_step():
  describe, probe = dry("status", "--name", "n", "--zone", "z")  # no --gin_file or --model_dir needed
  assert describe == ["gcloud", "compute", "tpus", "tpu-vm", "describe", "n", "--zone", "z", "--format=value(state)"]
  assert probe[4:7] == ["ssh", "n", "--zone"] and "--worker=0" in probe
  command = ssh_command(probe)
  assert "grep -E 'step [0-9]+' ~/glm_jax_train.log" in command and "tail -n 1" in command
  assert "pgrep -f " in command
  queued, vm, _ = dry("status", "--name", "n", "--zone", "z", "--queued")
  assert queued[3:5] == ["queued-resources", "describe"] and vm == describe


def test_logs_follows_worker_0():
  [logs] = dry("logs", "--name", "n", "--zone", "z")
  assert "--worker=0" in logs and ssh_command(logs) == "tail -n +1 -F ~/glm_jax_train.log"
  [last] = dry("logs", "--name", "n", "--zone", "z", "--lines", "50")
  assert ssh_command(last) == "tail -n 50 -F ~/glm_jax_train.log"


def test_stop_sends_sigterm_to_every_worker():
  [stop] = dry("stop", "--name", "n", "--zone", "z")
  assert stop[4:6] == ["ssh", "n"] and "--worker=all" in stop
  command = ssh_command(stop)
  assert command.startswith("pkill -TERM -f ") and command.endswith(" || true")  # TERM: the loop checkpoints
  assert "KILL" not in command and "-9" not in command


def test_delete_removes_the_vm_or_the_queued_resource():
  assert dry("delete", "--name", "n", "--zone", "z") == [
    ["gcloud", "compute", "tpus", "tpu-vm", "delete", "n", "--zone", "z", "--quiet"]
  ]
  assert dry("delete", "--name", "n", "--zone", "z", "--queued") == [
    ["gcloud", "compute", "tpus", "queued-resources", "delete", "n", "--zone", "z", "--quiet", "--force"]
  ]


def test_babysit_dry_run_prints_one_check_and_a_recovery():
  result = launch("babysit", "--name", "n", "--zone", "z", "--spot", *TRAIN_ARGS, "--dry_run")
  assert result.returncode == 0, result.stderr
  lines = commands(result.stdout)
  steps = [words[0] if words[0] == "tar" else words[4] for words in lines]
  assert steps == ["describe", "ssh", "ssh", "delete", "create", "tar", "scp", "ssh", "ssh"]
  assert "--worker=0" in lines[1] and ssh_command(lines[2]).startswith("pkill -TERM") and "--spot" in lines[4]
  run = commands(launch("run", "--name", "n", "--zone", "z", *TRAIN_ARGS, "--dry_run").stdout)
  assert ssh_command(lines[-1]) == ssh_command(run[-1])  # the same training command
  queued = commands(launch("babysit", "--name", "n", "--zone", "z", "--queued", *TRAIN_ARGS, "--dry_run").stdout)
  assert [words[3] for words in queued[:3]] == ["queued-resources", "tpu-vm", "tpu-vm"]
  assert queued[4][3:5] == ["queued-resources", "delete"] and queued[5][3:5] == ["queued-resources", "create"]


def test_unknown_subcommands_and_flags_a_subcommand_does_not_take_are_named():
  result = launch("frob", "--name", "n", "--zone", "z")
  assert result.returncode == 2 and "unknown subcommand 'frob'" in result.stderr
  result = launch("logs", "--name", "n", "--zone", "z", "--gin_file", "pyproject.toml")
  assert result.returncode == 2 and "logs takes no --gin_file" in result.stderr
  result = launch("status", "--name", "n", "--zone", "z", "extra")
  assert result.returncode == 2 and "unknown argument 'extra'" in result.stderr
  result = launch("babysit", "--name", "n", "--zone", "z", *TRAIN_ARGS, "--max_retries", "many")
  assert result.returncode == 2 and "--max_retries needs a whole number, got 'many'" in result.stderr
  result = launch("stop", "--name")
  assert result.returncode == 2 and "--name needs a value" in result.stderr
  assert all(len(r.stderr.splitlines()) == 1 for r in [launch("frob"), launch("create", "--reuse")])


def test_help_documents_every_subcommand_and_flag():
  result = launch("--help")
  assert result.returncode == 0
  text = SCRIPT.read_text()
  parser = text[text.index("while [[ $# -gt 0 ]]") :]
  parser = parser[: parser.index("\ndone\n")]
  flags = set(re.findall(r"(--[a-z_]+)(?=[|)])", parser)) | {"--gin.BINDING=VALUE"}
  assert len(flags) > 15
  for flag in flags:
    assert re.search(rf"^  (-h, )?{re.escape(flag)}\b", result.stdout, re.M), flag
  subcommands = re.search(r"^SUBCOMMANDS=\((.*)\)$", text, re.M).group(1).split()
  assert subcommands == ["create", "run", "status", "logs", "stop", "delete", "babysit"]
  for subcommand in subcommands:
    assert re.search(rf"^  {subcommand}  ", result.stdout, re.M), subcommand


def test_the_process_pattern_matches_training_and_not_the_shell_that_looks_for_it():
  [_, probe] = dry("status", "--name", "n", "--zone", "z")
  [stop] = dry("stop", "--name", "n", "--zone", "z")
  for command, tool in ((ssh_command(probe), "pgrep"), (ssh_command(stop), "pkill -TERM")):
    pattern = re.search(rf"{tool} -f '([^']+)'", command).group(1)
    # pgrep/pkill -f match (extended) regular expressions against whole command lines; the remote shell's is
    # `bash -c COMMAND`, which must not count as a training process (status would always see one running).
    assert re.search(pattern, "/home/me/glm_jax/.venv/bin/python -m glm_jax.main train --gin_file=g --model_dir=d")
    assert not re.search(pattern, f"bash -c {command}")


def test_the_probe_looks_for_the_lines_train_prints():
  """The probe's step and finished lines are what the loop and `train` print (stub tests use these lines)."""
  loop = (REPO / "glm_jax/train/loop.py").read_text()
  assert 'report(f"step {step_done}/{tc.num_steps}: "' in loop and 'return f"step {step}: "' in loop
  experiment = (REPO / "glm_jax/train/experiment.py").read_text()
  assert "f\"trained to step {summary['steps']} in {summary['seconds']:.0f} s: " in experiment
  main = (REPO / "glm_jax/main.py").read_text()
  assert "print(experiment.format_summary(result, args.model_dir))" in main


def test_the_python_check_accepts_a_wider_upper_bound(tmp_path):
  (tmp_path / "launch_tpu.sh").write_text(SCRIPT.read_text())
  (tmp_path / "x.gin").write_text("")
  args = ["run", "--name", "n", "--zone", "z", "--gin_file", "x.gin", "--model_dir", "d", "--dry_run"]
  for accepted in (">=3.11,<3.12", ">=3.11,<3.13", ">=3.11"):
    (tmp_path / "pyproject.toml").write_text(f'[project]\nrequires-python = "{accepted}"\n')
    result = subprocess.run(["bash", str(tmp_path / "launch_tpu.sh"), *args], capture_output=True, text=True)
    assert result.returncode == 0, (accepted, result.stderr)
    assert "--python\\ 3.11\\ .venv" in result.stdout
  (tmp_path / "pyproject.toml").write_text('[project]\nrequires-python = ">=3.12"\n')
  result = subprocess.run(["bash", str(tmp_path / "launch_tpu.sh"), *args], capture_output=True, text=True)
  assert result.returncode == 2 and "requires-python" in result.stderr


# Against a stub gcloud on PATH: describe answers from a scripted list of states, worker 0's probe runs for real
# (in bash, with a fake home and pgrep) on a log that says the run is running, finished or dead.

STUB_GCLOUD = r"""#!/usr/bin/env bash
printf '%q ' "$(basename "$0")" "$@" >> "$STUB/calls.log"; echo >> "$STUB/calls.log"
[[ "$(basename "$0")" == gcloud ]] || exit 0  # tar: logged only
next() {  # the next word of $STUB/$1 (the last one repeats)
  local n words
  n="$(cat "$STUB/$1.n" 2>/dev/null || echo 0)"; echo $((n + 1)) > "$STUB/$1.n"
  read -ra words < "$STUB/$1"
  echo "${words[$((n < ${#words[@]} ? n : ${#words[@]} - 1))]}"
}
case " $* " in
  *" describe "*)
    if [[ " $* " == *" queued-resources "* ]]; then state="$(next queued)"; else state="$(next vm)"; fi
    if [[ "$state" == NOT_FOUND ]]; then
      echo "ERROR: (gcloud.compute.tpus.describe) NOT_FOUND: Resource 'projects/p/locations/z/nodes/n' not found" >&2
      exit 1
    fi
    echo "$state" ;;
  *" ssh "*" --worker=0 "*)
    mkdir -p "$STUB/home"; log="$STUB/home/glm_jax_train.log"; rm -f "$STUB/alive"
    case "$(next probe)" in
      running) printf 'restored step 10 from gs://bucket/run\nstep 20/100: loss 2.000, lr 1.00e-04\n' > "$log"
               touch "$STUB/alive" ;;
      finished) printf 'step 100/100: loss 1.000, lr 1.00e-04\nstep 100: eval loss 1.1000 accuracy 0.500\n' > "$log"
                echo 'trained to step 100 in 12 s: loss 5.000 -> 1.000; checkpoints in gs://bucket/run' >> "$log" ;;
      dead) printf 'step 50/100: loss 3.000, lr 1.00e-04\nerror: out of memory\n' > "$log" ;;
    esac
    while [[ "$1" != --command ]]; do shift; done
    HOME="$STUB/home" bash -c "$2" ;;
esac
"""
FAKE_PGREP = '#!/usr/bin/env bash\n[[ -e "$STUB/alive" ]]\n'


def stub_launch(tmp_path, *args, vm="READY", probe="running", queued="ACTIVE"):
  """launch_tpu.sh with the stub gcloud (and tar, and pgrep) first on PATH: (result, the calls as words)."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir(parents=True, exist_ok=True)
  for name, text in (("gcloud", STUB_GCLOUD), ("tar", STUB_GCLOUD), ("pgrep", FAKE_PGREP)):
    (bin_dir / name).write_text(text)
    (bin_dir / name).chmod(0o755)
  for name, words in (("vm", vm), ("probe", probe), ("queued", queued)):
    (tmp_path / name).write_text(words + "\n")
  env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "STUB": str(tmp_path), "TMPDIR": str(tmp_path)}
  result = subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, cwd=REPO, env=env, timeout=30)
  log = tmp_path / "calls.log"
  calls = [shlex.split(line) for line in log.read_text().splitlines()] if log.exists() else []
  return result, calls


def steps(calls) -> list[str]:
  """Each call's verb: `describe`, `create`, ..., `ssh0` / `sshall` by worker, `queued-describe` etc., `tar`."""
  out = []
  for words in calls:
    if words[0] == "tar":
      out.append("tar")
      continue
    verb = words[4] + (words[next(i for i, w in enumerate(words) if w.startswith("--worker="))][9:] if words[4] in
                       ("ssh", "scp") else "")  # fmt: skip
    out.append(("queued-" if words[3] == "queued-resources" else "") + verb)
  return out


BABYSIT = ("babysit", "--name", "n", "--zone", "z", "--spot", *TRAIN_ARGS, "--poll_seconds", "0")


def test_babysit_recreates_a_preempted_vm_reruns_the_same_command_and_stops_when_finished(tmp_path):
  result, calls = stub_launch(tmp_path, *BABYSIT, vm="PREEMPTED READY", probe="running finished")
  assert result.returncode == 0, result.stderr
  assert steps(calls) == ["describe", "delete", "create", "tar", "scpall", "sshall", "sshall",
                          "describe", "ssh0", "describe", "ssh0"]  # fmt: skip
  assert calls[1] == ["gcloud", "compute", "tpus", "tpu-vm", "delete", "n", "--zone", "z", "--quiet"]
  assert calls[2][4:6] == ["create", "n"] and calls[2][-1] == "--spot"
  run = commands(launch("run", "--name", "n", "--zone", "z", *TRAIN_ARGS, "--dry_run").stdout)
  assert ssh_command(calls[6]) == ssh_command(run[-1])  # the same training command: it resumes from --model_dir
  assert "--model_dir=gs://bucket/run" in ssh_command(calls[6])
  assert "n is PREEMPTED: recovery 1 of 10" in result.stdout
  assert "training is running (step 20/100: loss 2.000, lr 1.00e-04)" in result.stdout
  assert "the run has finished: trained to step 100 in 12 s" in result.stdout
  assert list(tmp_path.glob("glm_jax_launch.*")) == []  # the archive's directory removed


def test_babysit_gives_up_after_max_retries(tmp_path):
  result, calls = stub_launch(tmp_path, *BABYSIT, "--max_retries", "2", vm="PREEMPTED")
  assert result.returncode == 1
  assert result.stderr.splitlines() == [
    "launch_tpu.sh: babysit gave up after 2 recoveries (--max_retries 2): n is PREEMPTED"
  ]
  assert steps(calls).count("create") == 2 and steps(calls).count("delete") == 2
  assert steps(calls).count("describe") == 3


def test_babysit_starts_a_missing_vm_and_restarts_a_dead_run(tmp_path):
  # The first start (no VM yet) is not a recovery; the restart after the run died is one.
  result, calls = stub_launch(tmp_path, *BABYSIT, "--max_retries", "1", vm="NOT_FOUND READY", probe="dead finished")
  assert result.returncode == 0, result.stderr
  start = ["tar", "scpall", "sshall", "sshall"]
  assert steps(calls) == ["describe", "create", *start, "describe", "ssh0", "sshall", *start, "describe", "ssh0"]
  assert "there is no VM n: starting it" in result.stdout
  assert "training is not running on worker 0 (last step: step 50/100: loss 3.000, lr 1.00e-04)" in result.stdout
  assert ssh_command(calls[8]).startswith("pkill -TERM")  # what is left of the dead run, before it runs again
  result, calls = stub_launch(tmp_path / "none", *BABYSIT, "--max_retries", "0", vm="READY", probe="dead")
  assert result.returncode == 1 and "gave up after 0 recoveries" in result.stderr
  assert steps(calls) == ["describe", "ssh0", "sshall", *start, "describe", "ssh0"]  # its own first start only


def test_babysit_queued_recreates_a_suspended_queued_resource(tmp_path):
  result, calls = stub_launch(tmp_path, *BABYSIT, "--queued", queued="SUSPENDED ACTIVE", vm="READY", probe="finished")
  assert result.returncode == 0, result.stderr
  assert steps(calls) == ["queued-describe", "queued-delete", "queued-create", "queued-describe", "tar", "scpall",
                          "sshall", "sshall", "queued-describe", "describe", "ssh0"]  # fmt: skip
  assert calls[1][-2:] == ["--quiet", "--force"] and calls[2][5:8] == ["n", "--node-id", "n"]


def test_create_queued_waits_until_active_and_fails_in_one_line(tmp_path):
  args = ("create", "--name", "n", "--zone", "z", "--queued", "--poll_seconds", "0")
  result, calls = stub_launch(tmp_path / "ok", *args, queued="WAITING_FOR_RESOURCES PROVISIONING ACTIVE")
  assert result.returncode == 0, result.stderr
  assert steps(calls) == ["queued-create"] + ["queued-describe"] * 3
  result, _ = stub_launch(tmp_path / "failed", *args, queued="WAITING_FOR_RESOURCES FAILED")
  assert result.returncode == 1 and len(result.stderr.splitlines()) == 1
  assert "queued resource n is FAILED" in result.stderr
  result, _ = stub_launch(tmp_path / "slow", *args, "--queued_timeout", "0", queued="WAITING_FOR_RESOURCES")
  assert result.returncode == 1 and len(result.stderr.splitlines()) == 1
  assert "still WAITING_FOR_RESOURCES after 0s (--queued_timeout)" in result.stderr


def test_status_prints_the_state_the_last_step_and_whether_training_runs(tmp_path):
  result, calls = stub_launch(tmp_path / "up", "status", "--name", "n", "--zone", "z", probe="running")
  assert result.returncode == 0, result.stderr
  assert result.stdout.splitlines() == [
    "state: READY",
    "last step: step 20/100: loss 2.000, lr 1.00e-04",
    "training: running",
  ]
  result, _ = stub_launch(tmp_path / "done", "status", "--name", "n", "--zone", "z", probe="finished")
  assert result.stdout.splitlines()[1:] == [
    "last step: trained to step 100 in 12 s: loss 5.000 -> 1.000; checkpoints in gs://bucket/run",
    "training: finished",
  ]
  result, calls = stub_launch(tmp_path / "gone", "status", "--name", "n", "--zone", "z", vm="NOT_FOUND")
  assert result.stdout == "state: NOT_FOUND\n" and steps(calls) == ["describe"]
