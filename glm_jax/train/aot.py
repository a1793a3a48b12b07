"""Ahead-of-time compilation of the train step for devices this process does not have (MaxText's train_compile):
does an experiment fit a TPU slice, before renting it? See glm_jax/deviceless.py for the compilers."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from glm_jax import deviceless, ops
from glm_jax.data.example import DTYPES, MODEL_FEATURES
from glm_jax.model import GLMConfig
from glm_jax.train import optimizer, partitioning
from glm_jax.train.experiment import Experiment
from glm_jax.train.loop import TrainConfig, train_program


def compile_train_step(
  model_config: GLMConfig,
  train_config: TrainConfig,
  optimizer_config: optimizer.OptimizerConfig,
  mesh: jax.sharding.Mesh,
) -> jax.stages.Compiled:
  """The train step `train` runs (loop.train_program), compiled for `mesh` from abstract state and batch: nothing
  is allocated or run, so the mesh may be of devices this process does not have (a TPU slice). Raises the
  compiler's error (JaxRuntimeError, RESOURCE_EXHAUSTED) when the step does not fit the devices' memory."""
  tc = train_config
  program = train_program(model_config, tc, optimizer_config, mesh)
  state, _ = partitioning.abstract_state(program.model, program.tx, mesh, tc.length, program.shardings)
  batch_sharding = partitioning.batch_sharding(mesh)
  names = (*MODEL_FEATURES, *(("cloze_label",) if tc.loss.cloze_candidates else ()))  # the cloze layout's too
  batch = {
    name: jax.ShapeDtypeStruct((tc.batch_size, tc.length), DTYPES.get(name, jnp.int32), sharding=batch_sharding)
    for name in names
  }
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  rng = jax.ShapeDtypeStruct((), jax.random.key(0).dtype, sharding=replicated)
  return program.train_step.trace(state, batch, rng).lower().compile()


def compile_for_topology(topology: str, exp: Experiment) -> dict:
  """The experiment's train step compiled by libtpu for a TPU topology (e.g. "v5e:2x4"; needs
  deviceless.environment()): per chip, the HBM it takes and whether it fits (deviceless.tpu_memory's fields), or
  the compiler's out-of-memory error. The mesh is `exp.mesh` over the topology's chips; attention left to the
  platform default gets TPU's kernel."""
  model_config, mesh_config = exp.model, exp.mesh
  devices = deviceless.tpu_devices(topology)
  kind = devices[0].device_kind
  model_config = model_config.replace(
    attention_implementation=model_config.attention_implementation or ops.default_implementation("tpu")
  )
  result = {
    "topology": topology,
    "device_kind": kind,
    "chips": len(devices),
    "mesh": "x".join(str(n) for n in mesh_config.shape(len(devices))),
    "hbm_gib": deviceless.TPU_HBM_BYTES[kind] / 2**30,
  }
  try:
    compiled = compile_train_step(model_config, exp.train, exp.optimizer, partitioning.make_mesh(mesh_config, devices))
  except jax.errors.JaxRuntimeError as error:
    if "RESOURCE_EXHAUSTED" not in str(error):
      raise
    return {**result, "fits": False, "error": " ".join(str(error).split())}
  return {**result, "fits": True, **deviceless.tpu_memory(compiled, kind)}


def format_result(result: dict) -> str:
  """`compile_for_topology`'s result as the `compile` command prints it."""
  head = (
    f"{result['device_kind']} x {result['chips']} ({result['topology']}), mesh data x fsdp x tensor = "
    f"{result['mesh']}, {result['hbm_gib']:.0f} GiB HBM per chip"
  )
  if not result["fits"]:
    return f"{head}\ndoes not fit: {result['error']}"
  return (
    f"{head}\nfits: peak {result['peak_gib']:.2f} GiB per chip ({result['peak_gib'] / result['hbm_gib']:.0%} of "
    f"HBM): arguments {result['argument_gib']:.2f} GiB (params, optimizer state, batch), temporaries "
    f"{result['temp_gib']:.2f} GiB; {result['mosaic_calls']} Mosaic (attention) kernel calls"
  )
