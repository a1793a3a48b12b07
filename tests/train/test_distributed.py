"""glm_jax.train.distributed.initialize: when it joins a distributed system, with what, and its errors.

jax.distributed.initialize is replaced by a recorder here (this process's backend is already up, and joining is
irreversible); tests/train/test_multihost.py runs the real thing with 2 processes.
"""

from __future__ import annotations

import jax
import pytest

from glm_jax import main
from glm_jax.train import distributed

SLURM_ENV = {
  "SLURM_JOB_ID": "7",
  "SLURM_STEP_NODELIST": "node001",
  "SLURM_NTASKS": "2",
  "SLURM_PROCID": "0",
  "SLURM_LOCALID": "0",
}


@pytest.fixture
def calls(monkeypatch):
  """The argument tuples jax.distributed.initialize was called with (not initialized before the test)."""
  recorded = []
  monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
  monkeypatch.setattr(jax.distributed, "initialize", lambda *args: recorded.append(args))
  for name in (*SLURM_ENV, "JAX_COORDINATOR_ADDRESS", "OMPI_MCA_orte_hnp_uri", "KUBERNETES_SERVICE_HOST"):
    monkeypatch.delenv(name, raising=False)
  return recorded


def test_explicit_arguments_reach_jax(calls):
  assert distributed.initialize("10.0.0.1:1234", 4, 3, [0, 1])
  assert calls == [("10.0.0.1:1234", 4, 3, [0, 1])]


def test_one_process_or_nothing_detected_is_a_no_op(calls):
  assert not distributed.cluster_detected()
  assert not distributed.initialize()
  assert not distributed.initialize(num_processes=1)
  assert calls == []


def test_detected_cluster_lets_jax_fill_in_everything(calls, monkeypatch):
  for name, value in SLURM_ENV.items():
    monkeypatch.setenv(name, value)
  assert distributed.cluster_detected()
  assert distributed.initialize()
  assert calls == [(None, None, None, None)]
  assert not distributed.initialize(num_processes=1), "num_processes=1 turns the detection off"
  assert len(calls) == 1


def test_coordinator_defaults_to_jax_environment_variable(calls, monkeypatch):
  monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "10.0.0.1:1234")
  assert distributed.initialize(num_processes=2, process_id=1)
  assert calls == [("10.0.0.1:1234", 2, 1, None)]


def test_already_initialized_is_not_initialized_again(calls, monkeypatch):
  monkeypatch.setattr(jax.distributed, "is_initialized", lambda: True)
  assert distributed.initialize("10.0.0.1:1234", 2, 0)
  assert calls == []


def test_cpu_collectives_default_to_gloo_and_a_choice_is_kept(calls):
  previous = jax.config.jax_cpu_collectives_implementation
  try:
    jax.config.update("jax_cpu_collectives_implementation", None)
    distributed.initialize("localhost:1234", 2, 0)
    assert jax.config.jax_cpu_collectives_implementation == "gloo"
    jax.config.update("jax_cpu_collectives_implementation", "mpi")
    distributed.initialize("localhost:1234", 2, 0)
    assert jax.config.jax_cpu_collectives_implementation == "mpi"
  finally:
    jax.config.update("jax_cpu_collectives_implementation", previous)


@pytest.mark.parametrize(
  "kwargs, match",
  [
    ({"coordinator_address": "h:1", "num_processes": 2}, "missing process_id"),
    ({"num_processes": 2, "process_id": 0}, "missing coordinator_address"),
    ({"coordinator_address": "h:1", "process_id": 0}, "missing num_processes"),
    ({"coordinator_address": "h:1", "num_processes": 2, "process_id": 2}, r"process_id=2 must be in 0 \.\. "),
    ({"coordinator_address": "h:1", "num_processes": 2, "process_id": -1}, "process_id=-1"),
    ({"coordinator_address": "h", "num_processes": 2, "process_id": 0}, "coordinator_address='h' must be HOST:PORT"),
    ({"num_processes": 0}, "num_processes=0 must be >= 1"),
  ],
)
def test_bad_arguments_fail_naming_them(calls, kwargs, match):
  with pytest.raises(ValueError, match=match):
    distributed.initialize(**kwargs)
  assert calls == []


def test_train_flags_and_environment_fallbacks(monkeypatch):
  args = main._parser().parse_args(
    ["train", "--model_dir=d", "--coordinator_address=h:1", "--num_processes=2", "--process_id=1"]
  )
  assert (args.coordinator_address, args.num_processes, args.process_id) == ("h:1", 2, 1)
  monkeypatch.setenv("GLM_JAX_COORDINATOR_ADDRESS", "e:2")
  monkeypatch.setenv("GLM_JAX_NUM_PROCESSES", "4")
  monkeypatch.setenv("GLM_JAX_PROCESS_ID", "3")
  args = main._parser().parse_args(["train", "--model_dir=d"])
  assert (args.coordinator_address, args.num_processes, args.process_id) == ("e:2", 4, 3)


def test_train_joins_before_reading_gin(calls, tmp_path):
  """main initializes first: a bad multi-host flag fails before the (here missing) gin file is read."""
  with pytest.raises(ValueError, match="missing process_id"):
    main.run(
      [
        "train",
        "--gin_file=no/such/file.gin",
        f"--model_dir={tmp_path}",
        "--num_processes=2",
        "--coordinator_address=127.0.0.1:1",
      ]
    )
