"""The one logical-axis rules table: the model's logical axis names -> the mesh axes ("data", "fsdp", "tensor").

Parameters, activations and the decoding cache carry logical names where the model defines them; this table maps
them (MaxText style): FSDP splits `embed` over "fsdp"; heads, MLP and vocabulary split over "tensor"; batches over
("data", "fsdp"). Training (glm_jax/train/partitioning.py) and decoding (glm_jax/infer) trace the model with it in
context (`with_mesh_rules`), so its constraints reach XLA.
"""

from __future__ import annotations

import functools
from typing import Callable

import flax.linen as nn
import jax
from jax.sharding import Mesh

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")
LOGICAL_AXIS_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
  ("vocab", "tensor"),
  ("embed", "fsdp"),
  ("heads", "tensor"),
  ("mlp", "tensor"),
  ("kv", None),
  ("layers", None),
  ("activation_batch", BATCH_AXES),
  ("activation_length", None),
  ("activation_embed", None),
)


def with_mesh_rules(fn: Callable, mesh: Mesh) -> Callable:
  """`fn` run with `mesh` (as the abstract mesh) and LOGICAL_AXIS_RULES in context, for jax.jit to trace.

  Inside, flax's logical constraints resolve to mesh axes; outside any mesh they would be no-ops. The abstract
  mesh is entered inside the traced function because `jax.set_mesh` may not be entered under jit, so the
  returned function can be jitted, lowered and compiled like any other.
  """

  @functools.wraps(fn)
  def wrapped(*args, **kwargs):
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh), nn.logical_axis_rules(LOGICAL_AXIS_RULES):
      return fn(*args, **kwargs)

  return wrapped


def logical_sharding(names: tuple[str | None, ...], mesh: Mesh) -> jax.sharding.NamedSharding:
  """The NamedSharding on `mesh` of an array whose axes carry the logical `names`."""
  return nn.logical_to_mesh_sharding(jax.sharding.PartitionSpec(*names), mesh, LOGICAL_AXIS_RULES)
