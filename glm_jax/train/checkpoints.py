"""orbax checkpoints of the TrainState, plus the model config, so a directory alone rebuilds the model.

Layout: DIR/<step>/state (params, opt_state, step; orbax StandardSave) and DIR/<step>/model_config (GLMConfig
as JSON). The data iterator position is not saved yet: a resumed run restarts its input stream.
"""
from __future__ import annotations

import dataclasses
import os

import jax
import orbax.checkpoint as ocp

from glm_jax.model import GLMConfig


def make_manager(directory: str, save_every: int = 1000, max_to_keep: int | None = 3) -> ocp.CheckpointManager:
  """A CheckpointManager saving every `save_every` steps and keeping the newest `max_to_keep`."""
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, save_interval_steps=save_every, create=True)
  return ocp.CheckpointManager(os.path.abspath(directory), options=options)


def save(manager: ocp.CheckpointManager, state, model_config: GLMConfig, *, force: bool = False) -> bool:
  """Saves `state` at its own step (if the interval says so, or `force`); returns whether it saved."""
  step = int(jax.device_get(state.step))
  return manager.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state), model_config=ocp.args.JsonSave(dataclasses.asdict(model_config))),
      force=force)


def restore_latest(manager: ocp.CheckpointManager, abstract_state):
  """The newest saved state placed like `abstract_state` (a tree of jax.ShapeDtypeStruct with shardings), or
  None when the directory holds no checkpoint."""
  step = manager.latest_step()
  if step is None:
    return None
  restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state)))
  return restored.state


def latest_step(directory: str) -> int | None:
  with ocp.CheckpointManager(os.path.abspath(directory)) as manager:
    return manager.latest_step()


def load_model_config(directory: str, step: int | None = None) -> GLMConfig:
  """The GLMConfig saved with the checkpoint at `step` (default: the newest) under `directory`."""
  with ocp.CheckpointManager(os.path.abspath(directory)) as manager:
    step = manager.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint under {directory!r} (train first with "
                              f"`python -m glm_jax.main train --model_dir={directory} ...`)")
    restored = manager.restore(step, args=ocp.args.Composite(model_config=ocp.args.JsonRestore()))
  return GLMConfig(**restored.model_config)


def abstract_like(tree, shardings):
  """ShapeDtypeStructs of `tree` (arrays or ShapeDtypeStructs) carrying `shardings`: a restore target."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def restore_params(directory: str, abstract_params, step: int | None = None):
  """Only the params of the checkpoint at `step` (default: the newest), placed like `abstract_params`
  (ShapeDtypeStructs, e.g. from partitioning.abstract_boxed_params; on one device unless they carry a
  sharding); the optimizer state is not read. Also reads the params-only checkpoints of glm_jax.convert."""
  with ocp.CheckpointManager(os.path.abspath(directory)) as manager:
    step = manager.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint under {directory!r}")
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract_params = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None) or device),
        abstract_params)
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.PyTreeRestore(item={"params": abstract_params}, partial_restore=True)))
  return restored.state["params"]
