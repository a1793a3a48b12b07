"""The device mesh and the shardings of state and batches.

Parameters carry logical axis names where the model defines them (glm_jax/model/glm.py); the one rules table,
`LOGICAL_AXIS_RULES` (glm_jax/model/sharding.py), maps each name to mesh axes (MaxText style): FSDP splits `embed`
over "fsdp", heads, MLP and vocabulary split over "tensor". Optimizer state follows its parameters; batches split
their leading axis over ("data", "fsdp"). Steps are traced with the mesh and the rules table in context
(`with_mesh_rules`), so the model's activation constraints (`nn.with_logical_constraint(x, ACTIVATION_AXES)`, batch
over data x fsdp) reach XLA; the state and batch shardings are stated on the jit call (glm_jax/train/step.py).
"""

from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from glm_jax.model.sharding import BATCH_AXES, LOGICAL_AXIS_RULES, MESH_AXES, with_mesh_rules  # noqa: F401
from glm_jax.train.state import TrainState


@dataclasses.dataclass(frozen=True)
class MeshConfig:
  """Mesh shape over ("data", "fsdp", "tensor"); one entry may be -1 (all remaining devices)."""

  data: int = -1
  fsdp: int = 1
  tensor: int = 1

  def shape(self, num_devices: int) -> tuple[int, int, int]:
    dims = [self.data, self.fsdp, self.tensor]
    if dims.count(-1) > 1:
      raise ValueError(f"MeshConfig{tuple(dims)} has more than one -1; at most one axis may take the rest")
    known = math.prod(d for d in dims if d != -1)
    if -1 in dims:
      if num_devices % known:
        raise ValueError(f"MeshConfig{tuple(dims)}: {num_devices} devices do not divide by {known}")
      dims[dims.index(-1)] = num_devices // known
    if math.prod(dims) != num_devices:
      raise ValueError(
        f"MeshConfig{tuple(dims)} needs {math.prod(dims)} devices but {num_devices} are present "
        f"(set one axis to -1 or change the shape)"
      )
    return tuple(dims)


def make_mesh(config: MeshConfig, devices=None) -> Mesh:
  devices = list(jax.devices() if devices is None else devices)
  shape = config.shape(len(devices))
  return Mesh(np.asarray(devices).reshape(shape), MESH_AXES)


def logical_shardings(boxed_tree, mesh: Mesh):
  """NamedShardings for a tree of nn.LogicallyPartitioned values (e.g. abstract params from eval_shape)."""
  return nn.logical_to_mesh_sharding(nn.get_partition_spec(boxed_tree), mesh, LOGICAL_AXIS_RULES)


def state_shardings(boxed_params, tx: optax.GradientTransformation, mesh: Mesh) -> TrainState:
  """Shardings of a TrainState: params by the rules table, optimizer moments like their params, scalars
  (step, counts) replicated."""
  param_shardings = logical_shardings(boxed_params, mesh)
  abstract_params = nn.unbox(boxed_params)
  abstract_opt_state = jax.eval_shape(tx.init, abstract_params)
  replicated = NamedSharding(mesh, P())
  opt_shardings = optax.tree_map_params(
    tx, lambda _, sharding: sharding, abstract_opt_state, param_shardings, transform_non_params=lambda _: replicated
  )
  return TrainState(step=replicated, params=param_shardings, opt_state=opt_shardings)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over ("data", "fsdp"), the rest replicated."""
  return NamedSharding(mesh, P(BATCH_AXES))


def global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Process-local numpy rows -> global jax.Arrays sharded over the batch axes."""
  sharding = batch_sharding(mesh)
  batch_devices = mesh.shape["data"] * mesh.shape["fsdp"]
  out = {}
  for name, value in local_batch.items():
    global_rows = value.shape[0] * jax.process_count()
    if global_rows % batch_devices:
      raise ValueError(
        f"batch of {global_rows} rows ({name}) does not split over data*fsdp={batch_devices} "
        f"devices (make TrainConfig.batch_size a multiple of {batch_devices})"
      )
    out[name] = jax.make_array_from_process_local_data(sharding, value)
  return out


def abstract_boxed_params(model: nn.Module, length: int):
  """Shapes and logical axis names of the model's params (nothing allocated), from a [1, length] dummy."""
  ids = jax.ShapeDtypeStruct((1, length), np.int32)
  sep = jax.ShapeDtypeStruct((1,), np.int32)
  init = lambda rng, ids, sep: model.init(rng, ids, ids, ids, sep=sep)["params"]  # noqa: E731
  return jax.eval_shape(init, jax.random.key(0), ids, sep)


def abstract_state(
  model: nn.Module, tx: optax.GradientTransformation, mesh: Mesh, length: int, shardings: TrainState | None = None
) -> tuple[TrainState, TrainState]:
  """The TrainState's shapes and dtypes in their shardings (`state_shardings`, unless given), nothing allocated:
  what a train step is lowered with to compile it for devices this process does not have (glm_jax/deviceless.py).
  Returns (state, shardings)."""
  boxed = abstract_boxed_params(model, length)
  shardings = state_shardings(boxed, tx, mesh) if shardings is None else shardings
  shapes = jax.eval_shape(lambda params: TrainState.create(params, tx), nn.unbox(boxed))
  state = jax.tree.map(
    lambda leaf, sharding: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding), shapes, shardings
  )
  return state, shardings


def init_state(
  model: nn.Module,
  tx: optax.GradientTransformation,
  mesh: Mesh,
  rng: jax.Array,
  length: int,
  shardings: TrainState | None = None,
) -> tuple[TrainState, TrainState]:
  """A freshly initialized TrainState created directly in its shardings (`state_shardings`, unless given); returns
  (state, shardings)."""
  if shardings is None:
    shardings = state_shardings(abstract_boxed_params(model, length), tx, mesh)

  def init(rng):
    ids = np.zeros((1, length), np.int32)
    params = nn.unbox(model.init(rng, ids, ids, ids, sep=np.zeros((1,), np.int32))["params"])
    return TrainState.create(params, tx)

  return jax.jit(init, out_shardings=shardings)(rng), shardings
