"""The train state: everything a step reads and writes, and everything a checkpoint holds."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct


@struct.dataclass
class TrainState:
  """step: int32 scalar (optimizer steps taken); params: the GLM params tree; opt_state: optax state."""

  step: jax.Array
  params: Any
  opt_state: optax.OptState

  @classmethod
  def create(cls, params, tx: optax.GradientTransformation) -> "TrainState":
    return cls(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))
