"""The model_dir lease: a second run on a directory in use refuses to start; a stale or broken lease is taken over."""

from __future__ import annotations

import json
import time

import pytest

from glm_jax.train import lease


def test_a_second_run_refuses_a_directory_in_use_and_takes_it_once_the_first_ends(tmp_path):
  with lease.Lease(str(tmp_path), refresh_every=0.05, stale_after=5.0) as first:
    record = json.loads((tmp_path / lease.LEASE_FILE).read_text())
    assert record["owner"] == first.owner and record["pid"] > 0
    time.sleep(0.2)
    assert json.loads((tmp_path / lease.LEASE_FILE).read_text())["time"] > record["time"]  # refreshed
    with pytest.raises(RuntimeError, match=r"is in use by another run: pid \d+ on .*--break_lock"):
      lease.Lease(str(tmp_path), refresh_every=1.0, stale_after=5.0).__enter__()
  assert not (tmp_path / lease.LEASE_FILE).exists()  # released on exit
  with lease.Lease(str(tmp_path)):
    pass


def test_a_stale_lease_is_taken_over_and_break_lock_takes_a_live_one(tmp_path, caplog):
  path = tmp_path / lease.LEASE_FILE
  path.write_text(json.dumps({"owner": "dead", "host": "h", "pid": 1, "time": time.time() - 120}))
  with lease.Lease(str(tmp_path), stale_after=60.0) as taken:
    assert json.loads(path.read_text())["owner"] == taken.owner
  assert "stale" in caplog.text
  path.write_text(json.dumps({"owner": "alive", "host": "h", "pid": 1, "time": time.time()}))
  with pytest.raises(RuntimeError, match="in use by another run"):
    lease.Lease(str(tmp_path)).__enter__()
  with lease.Lease(str(tmp_path), break_lock=True) as broken:
    assert json.loads(path.read_text())["owner"] == broken.owner
  assert "--break_lock" in caplog.text


def test_a_torn_lease_file_does_not_block_a_run(tmp_path):
  (tmp_path / lease.LEASE_FILE).write_text('{"owner": "x", "ti')
  with lease.Lease(str(tmp_path)) as held:
    assert json.loads((tmp_path / lease.LEASE_FILE).read_text())["owner"] == held.owner


def test_a_lease_whose_process_on_this_host_is_gone_is_taken_at_once(tmp_path, caplog):
  import socket
  import subprocess
  import sys

  dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
  record = {"owner": "killed", "host": socket.gethostname(), "pid": int(dead.stdout), "time": time.time()}
  (tmp_path / lease.LEASE_FILE).write_text(json.dumps(record))  # as a `kill -9`ed run leaves it, just refreshed
  with lease.Lease(str(tmp_path)):
    pass
  assert "its process is gone" in caplog.text
