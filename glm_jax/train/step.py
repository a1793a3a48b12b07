"""The loss, the pure train step and the eval step.

Loss: cross entropy over Part B positions (loss_mask), summed and divided by the number of Part B tokens in
the whole (global) batch, in float32. Logits of padded vocabulary rows (ids >= vocab_size) are masked out
before the softmax, so they never receive probability.

Gradient accumulation scans over microbatches inside the step; each microbatch's summed loss is divided by
the token count of the whole batch, so the accumulated gradient equals the big-batch gradient.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax

from glm_jax.model import GLM, forward, mask_padded_vocab
from glm_jax.train import partitioning
from glm_jax.train.state import TrainState


def loss_sums(logits: jax.Array, target_ids: jax.Array, loss_mask: jax.Array, vocab_size: int):
  """logits float [B, L, V]; target_ids int [B, L]; loss_mask float [B, L].

  Returns (summed cross entropy, number of correct argmax predictions), both over Part B only, float32.
  """
  logits = mask_padded_vocab(logits.astype(jnp.float32), vocab_size)
  loss_mask = loss_mask.astype(jnp.float32)
  token_loss = optax.softmax_cross_entropy_with_integer_labels(logits, target_ids)
  correct = (jnp.argmax(logits, axis=-1) == target_ids).astype(jnp.float32)
  return jnp.sum(token_loss * loss_mask), jnp.sum(correct * loss_mask)


def _microbatches(batch: dict, n: int) -> dict:
  """[B, ...] -> [n, B/n, ...], microbatch i = rows i, i+n, ... so each device keeps its own rows."""

  def split(x):
    if x.shape[0] % n:
      raise ValueError(
        f"batch of {x.shape[0]} rows does not split into accumulation_steps={n} microbatches "
        f"(make TrainConfig.batch_size a multiple of it)"
      )
    return jnp.swapaxes(x.reshape(x.shape[0] // n, n, *x.shape[1:]), 0, 1)

  return jax.tree.map(split, batch)


def make_train_step(
  model: GLM, tx: optax.GradientTransformation, schedule: optax.Schedule | None = None, accumulation_steps: int = 1
) -> Callable:
  """Returns the pure `train_step(state, batch, rng) -> (state, metrics)`.

  batch: dict of [B, L] model features; rng: a base key, folded with the step number (and the microbatch
  index) to give each step its own dropout key. Metrics are float32 scalars: loss, accuracy (Part B),
  num_tokens (Part B tokens), grad_norm, learning_rate.
  """
  vocab_size = model.config.vocab_size

  def microbatch_grads(params, micro, total_tokens, rng):
    def loss_fn(p):
      logits = forward(model, p, micro, deterministic=False, dropout_rng=rng)
      loss_sum, correct = loss_sums(logits, micro["target_ids"], micro["loss_mask"], vocab_size)
      return loss_sum / total_tokens, correct

    (loss, correct), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    return loss, correct, grads

  def train_step(state: TrainState, batch: dict, rng: jax.Array):
    step_rng = jax.random.fold_in(rng, state.step)
    num_tokens = jnp.sum(batch["loss_mask"].astype(jnp.float32))
    total_tokens = jnp.maximum(num_tokens, 1.0)
    if accumulation_steps == 1:
      loss, correct, grads = microbatch_grads(state.params, batch, total_tokens, step_rng)
    else:

      def body(carry, xs):
        loss_acc, correct_acc, grads_acc = carry
        index, micro = xs
        loss, correct, grads = microbatch_grads(state.params, micro, total_tokens, jax.random.fold_in(step_rng, index))
        return (loss_acc + loss, correct_acc + correct, jax.tree.map(jnp.add, grads_acc, grads)), None

      zeros = jax.tree.map(jnp.zeros_like, state.params)
      (loss, correct, grads), _ = jax.lax.scan(
        body,
        (jnp.zeros(()), jnp.zeros(()), zeros),
        (jnp.arange(accumulation_steps), _microbatches(batch, accumulation_steps)),
      )
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {
      "loss": loss,
      "accuracy": correct / total_tokens,
      "num_tokens": num_tokens,
      "grad_norm": optax.global_norm(grads),
    }
    if schedule is not None:
      metrics["learning_rate"] = jnp.asarray(schedule(state.step), jnp.float32)
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

  return train_step


def make_eval_step(model: GLM) -> Callable:
  """Returns `eval_step(params, batch) -> {loss_sum, correct, num_tokens}` (deterministic; sums, so the
  caller can average over many batches exactly)."""

  def eval_step(params, batch: dict):
    logits = forward(model, params, batch, deterministic=True)
    loss_sum, correct = loss_sums(logits, batch["target_ids"], batch["loss_mask"], model.config.vocab_size)
    num_tokens = jnp.sum(batch["loss_mask"].astype(jnp.float32))
    return {"loss_sum": loss_sum, "correct": correct, "num_tokens": num_tokens}

  return eval_step


def jit_train_step(train_step: Callable, state_shardings, mesh: jax.sharding.Mesh) -> Callable:
  """jit with the shardings stated here: state by the rules table, batch over (data, fsdp), rng and metrics
  replicated; the old state is donated. The step is traced with the mesh and the rules table in context, so
  the model's activation constraints apply (partitioning.with_mesh_rules)."""
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  return jax.jit(
    partitioning.with_mesh_rules(train_step, mesh),
    in_shardings=(state_shardings, partitioning.batch_sharding(mesh), replicated),
    out_shardings=(state_shardings, replicated),
    donate_argnums=0,
  )


def jit_eval_step(eval_step: Callable, param_shardings, mesh: jax.sharding.Mesh) -> Callable:
  """jit with params by the rules table, batch over (data, fsdp), replicated sums; traced like the train step."""
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  return jax.jit(
    partitioning.with_mesh_rules(eval_step, mesh),
    in_shardings=(param_shardings, partitioning.batch_sharding(mesh)),
    out_shardings=replicated,
  )
