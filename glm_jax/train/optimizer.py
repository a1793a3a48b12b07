"""AdamW as GLM trains it: linear warmup, cosine or linear decay to a floor, global-norm clipping,
weight decay on matrices and embeddings only (never on biases or LayerNorm parameters)."""

from __future__ import annotations

import dataclasses
from typing import Literal

import jax
import optax

DecayStyle = Literal["cosine", "linear", "constant"]
# Parameter-path names whose leaves get no weight decay: every bias, and LayerNorm scales (flax names the
# LayerNorm parameters `scale` and `bias`).
_NO_DECAY_LEAF_NAMES = ("bias", "scale")


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  """AdamW hyper-parameters; the defaults are GLM's (Adam b2=0.98, eps=1e-6, clip 1.0, wd 0.1)."""

  learning_rate: float = 1e-4  # peak, reached at the end of warmup
  warmup_steps: int = 1000
  decay_style: DecayStyle = "cosine"
  decay_steps: int | None = None  # steps from start to the end of decay; None: the run's total steps
  min_lr_ratio: float = 0.1  # floor of the decay, as a fraction of the peak
  b1: float = 0.9
  b2: float = 0.98
  eps: float = 1e-6
  weight_decay: float = 0.1
  grad_clip_norm: float | None = 1.0  # None or 0: no clipping

  def __post_init__(self):
    if self.decay_style not in ("cosine", "linear", "constant"):
      raise ValueError(f"decay_style={self.decay_style!r}; expected 'cosine', 'linear' or 'constant'")
    if not 0.0 <= self.min_lr_ratio <= 1.0:
      raise ValueError(f"min_lr_ratio={self.min_lr_ratio} must lie in [0, 1]")


def learning_rate_schedule(config: OptimizerConfig, total_steps: int) -> optax.Schedule:
  """Linear warmup 0 -> peak over `warmup_steps`, then decay to `min_lr_ratio * peak` at `decay_steps`."""
  peak = config.learning_rate
  decay_steps = config.decay_steps or total_steps
  warmup = min(config.warmup_steps, decay_steps)
  if config.warmup_steps > decay_steps:
    raise ValueError(
      f"warmup_steps={config.warmup_steps} exceeds decay_steps={decay_steps} "
      f"(lower OptimizerConfig.warmup_steps or train longer)"
    )
  warmup_fn = optax.linear_schedule(0.0, peak, max(warmup, 1))
  remaining = max(decay_steps - warmup, 1)
  floor = peak * config.min_lr_ratio
  if config.decay_style == "cosine":
    decay_fn = optax.cosine_decay_schedule(peak, remaining, alpha=config.min_lr_ratio)
  elif config.decay_style == "linear":
    decay_fn = optax.linear_schedule(peak, floor, remaining)
  else:
    decay_fn = optax.constant_schedule(peak)
  return optax.join_schedules([warmup_fn, decay_fn], boundaries=[warmup])


def weight_decay_mask(params) -> object:
  """True for leaves that get weight decay: everything except biases and LayerNorm scales (by path)."""

  def decays(path, _):
    name = path[-1].key if hasattr(path[-1], "key") else str(path[-1])
    return name not in _NO_DECAY_LEAF_NAMES

  return jax.tree_util.tree_map_with_path(decays, params)


def make_optimizer(config: OptimizerConfig, total_steps: int) -> optax.GradientTransformation:
  """clip(global norm) -> AdamW with the masked weight decay and the schedule above."""
  schedule = learning_rate_schedule(config, total_steps)
  chain = []
  if config.grad_clip_norm:
    chain.append(optax.clip_by_global_norm(config.grad_clip_norm))
  chain.append(
    optax.adamw(
      schedule, b1=config.b1, b2=config.b2, eps=config.eps, weight_decay=config.weight_decay, mask=weight_decay_mask
    )
  )
  return optax.chain(*chain)
