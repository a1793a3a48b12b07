"""What stops a run early, checked by the loop at step boundaries: a preemption notice and non-finite values."""

from __future__ import annotations

import signal
import threading

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp


def _track_first_nonfinite(first_bad, step, metrics):
  """(step, loss, grad_norm) of the first step whose loss or grad norm is not finite; step -1 while none is."""
  bad_step, bad_loss, bad_norm = first_bad
  loss, grad_norm = metrics["loss"], metrics["grad_norm"]
  new = (bad_step < 0) & ~(jnp.isfinite(loss) & jnp.isfinite(grad_norm))
  return jnp.where(new, step, bad_step), jnp.where(new, loss, bad_loss), jnp.where(new, grad_norm, bad_norm)


def _all_finite(tree) -> jax.Array:
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


class FiniteGuard:
  """Stops the run at the first NaN/Inf loss or grad norm, before that state can be saved.

  `update` runs every step as one tiny jitted computation on device (no host sync, so steps stay
  asynchronously dispatched); `check` reads its result on the host, which waits for the steps before it. The
  loop checks at log steps and before every save, where it also checks the params themselves (a read of every
  parameter, cheap next to a save): a NaN is reported up to log_every steps late and is never saved.
  """

  def __init__(self):
    self._first_bad = (np.int32(-1), np.float32(0), np.float32(0))
    self._track = jax.jit(_track_first_nonfinite)
    self._params_finite = jax.jit(_all_finite)

  def update(self, step: int, metrics: dict[str, jax.Array]) -> None:
    """Records `step` (the step just taken) if its metrics' loss or grad_norm is the first non-finite one."""
    self._first_bad = self._track(self._first_bad, np.int32(step), metrics)

  def check(self, manager: ocp.CheckpointManager, step: int, params=None) -> None:
    """Raises FloatingPointError if a step so far had a non-finite loss or grad norm, or (when given) `params`
    after `step` are not finite; the message names the step and the newest checkpoint in `manager`."""
    bad_step, loss, grad_norm = jax.device_get(self._first_bad)
    if bad_step >= 0:
      raise self._error(f"loss is {float(loss)} (grad_norm {float(grad_norm)}) at step {int(bad_step)}", manager)
    if params is not None and not bool(jax.device_get(self._params_finite(params))):
      raise self._error(f"the parameters after step {step} are not finite", manager)

  @staticmethod
  def _error(what: str, manager: ocp.CheckpointManager) -> FloatingPointError:
    manager.wait_until_finished()  # a save in flight is of an earlier, finite step: let it complete
    good = manager.latest_step()
    good = f"step {good} in {manager.directory}" if good is not None else "none (no checkpoint was saved)"
    return FloatingPointError(
      f"{what}; last good checkpoint: {good}. The run stopped without saving this state; "
      "lower OptimizerConfig.learning_rate (or check the data of that step) and rerun"
    )


class PreemptionWatch:
  """Whether the run must stop for a preemption, asked at step boundaries.

  One process: SIGTERM (what schedulers send before they kill a job) sets a flag. The handler is installed
  from the main thread for the loop's duration; `close` puts the previous one back. Several processes:
  orbax's `reached_preemption`, JAX's preemption sync point, which every process reaches at the same step
  (jax.distributed's coordination service takes SIGTERM there, so no Python handler is installed).
  """

  def __init__(self):
    self.signalled = False
    self._installed = False
    self._previous = None
    if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)
      self._installed = True

  def _on_sigterm(self, signum, frame) -> None:
    del signum, frame
    self.signalled = True

  def reached(self, step: int, manager: ocp.CheckpointManager) -> bool:
    if jax.process_count() > 1:
      return manager.reached_preemption(step)
    return self.signalled

  def close(self) -> None:
    if self._installed:
      # None: the previous handler was not installed from Python; the default action is the closest match.
      signal.signal(signal.SIGTERM, signal.SIG_DFL if self._previous is None else self._previous)
      self._installed = False
