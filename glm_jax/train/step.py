"""The one loss configuration, the pure train step and the eval step.

Loss: cross entropy over Part B positions (loss_mask), in float32, as a weighted sum over the tokens of the whole
(global) batch (`token_weights`, from `LossConfig`):
  - by default every Part B token weighs the same (1 / the batch's Part B tokens): one token mean;
  - with `LossConfig.objective_weights` each objective's tokens (the `objective_ids` feature) are averaged on their
    own and the objectives' means are combined with those weights (normalized over the objectives the batch
    holds). With the mixture rates as weights this is the THUDM reference's weighting: it draws one objective per
    micro-batch and averages micro-batch token means, so each objective gets about its rate of the gradient.
Logits of padded vocabulary rows (ids >= vocab_size) are masked out before the softmax, so they never receive
probability.

Gradient accumulation scans over microbatches inside the step; the token weights are computed on the whole batch
first, so the accumulated gradient equals the big-batch gradient.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from glm_jax.data.example import OBJECTIVES
from glm_jax.model import GLM, forward, mask_padded_vocab
from glm_jax.train import partitioning
from glm_jax.train.state import TrainState


@dataclasses.dataclass(frozen=True)
class LossConfig:
  """The one loss configuration (gin: `TrainConfig.loss = @LossConfig()`).

  objective_weights: None, one token mean over the batch; or objective name (glm_jax.data.example.OBJECTIVES:
    token, sentence, document, other) -> weight >= 0, e.g. `LossConfig.objective_weights = @glm_mixture_rates()`
    for the reference's weighting. An objective it does not name gets weight 0: its tokens are not trained on.
  cloze_candidates: None, or C >= 2: the reference's cross-entropy cloze loss. Batches then hold each example's C
    candidate rows one after the other (the cloze layout of glm_jax.data.feature_converter, `DataConfig.candidates`),
    with the example's right candidate in `cloze_label`; a candidate's score is the summed log-likelihood of its
    scored targets (loss_mask), a row with none is a padding candidate, and the loss is the mean over examples of
    the cross entropy of the softmax over the candidates' scores (tasks/superglue/ of the reference, `cross_entropy`).
  label_smoothing: epsilon in [0, 1): each trained token's loss is (1 - epsilon) x its cross entropy + epsilon x the
    mean over the real vocabulary of -log p (the reference's --label-smoothing of tasks/seq2seq/finetune.py, whose
    mean also counts the padded vocabulary rows; ours are masked out). Training only: the eval loss stays the plain
    cross entropy, comparable across runs. Not with cloze_candidates (the reference smooths its seq2seq loss only).
  """

  objective_weights: Mapping[str, float] | None = None
  cloze_candidates: int | None = None
  label_smoothing: float = 0.0

  def __post_init__(self):
    if not 0.0 <= self.label_smoothing < 1.0 or (self.label_smoothing and self.cloze_candidates is not None):
      raise ValueError(
        f"LossConfig.label_smoothing={self.label_smoothing}: expected 0 <= epsilon < 1, and no cloze_candidates"
      )
    if self.cloze_candidates is not None and (self.cloze_candidates < 2 or self.objective_weights is not None):
      raise ValueError(
        f"LossConfig.cloze_candidates={self.cloze_candidates}: needs at least 2 candidates and no objective_weights"
      )
    weights = self.objective_weights
    if weights is None:
      return
    unknown = sorted(set(weights) - set(OBJECTIVES))
    if unknown or any(not w >= 0 for w in weights.values()) or not sum(weights.values()) > 0:
      raise ValueError(
        f"LossConfig.objective_weights={dict(weights)}: expected weights >= 0 with a positive sum for objectives of "
        f"{OBJECTIVES}" + (f" (unknown: {unknown})" if unknown else "")
      )
    object.__setattr__(
      self, "objective_weights", {name: float(weights[name]) for name in OBJECTIVES if name in weights}
    )

  def weight_vector(self) -> np.ndarray | None:
    """float32 [len(OBJECTIVES)]: each objective id's weight, or None for the plain token mean."""
    if self.objective_weights is None:
      return None
    return np.array([self.objective_weights.get(name, 0.0) for name in OBJECTIVES], np.float32)


def objective_counts(loss_mask: jax.Array, objective_ids: jax.Array) -> jax.Array:
  """float32 [len(OBJECTIVES)]: the Part B tokens of each objective."""
  onehot = jax.nn.one_hot(objective_ids, len(OBJECTIVES), dtype=jnp.float32)
  return jnp.einsum("blk,bl->k", onehot, loss_mask.astype(jnp.float32))


def objective_weighted_loss(loss_sums: jax.Array, counts: jax.Array, weights) -> jax.Array:
  """The loss of per-objective summed losses and token counts [K]: the weighted mean of the objectives' token means,
  normalized over the weighted objectives present (0 when none is)."""
  weights = jnp.asarray(weights, jnp.float32)
  present = (counts > 0) & (weights > 0)
  means = loss_sums / jnp.maximum(counts, 1.0)
  norm = jnp.sum(jnp.where(present, weights, 0.0))
  return jnp.sum(jnp.where(present, weights * means, 0.0)) / jnp.maximum(norm, 1e-30)


def token_weights(loss_mask: jax.Array, objective_ids: jax.Array, weights: np.ndarray | None) -> jax.Array:
  """float32 [B, L]: each token's weight in the loss (0 off Part B); they sum to 1 over a batch with Part B tokens
  (of a weighted objective). `weights` [K] from LossConfig.weight_vector: None, the token mean."""
  mask = loss_mask.astype(jnp.float32)
  if weights is None:
    return mask / jnp.maximum(jnp.sum(mask), 1.0)
  counts = objective_counts(mask, objective_ids)
  weights = jnp.asarray(weights, jnp.float32)
  present = (counts > 0) & (weights > 0)
  norm = jnp.maximum(jnp.sum(jnp.where(present, weights, 0.0)), 1e-30)
  per_token = jnp.where(present, weights / jnp.maximum(counts, 1.0) / norm, 0.0)
  return mask * per_token[objective_ids]


def token_stats(
  logits: jax.Array, target_ids: jax.Array, vocab_size: int, label_smoothing: float = 0.0
) -> tuple[jax.Array, jax.Array]:
  """logits float [B, L, V]; target_ids int [B, L]. Returns float32 [B, L] each: the cross entropy of every
  position (with `label_smoothing` epsilon: (1 - epsilon) x it + epsilon x the mean of -log p over the real
  vocabulary, LossConfig) and 1.0 where the argmax is the target, padded vocabulary rows (ids >= vocab_size) masked
  out."""
  logits = mask_padded_vocab(logits.astype(jnp.float32), vocab_size)
  token_loss = optax.softmax_cross_entropy_with_integer_labels(logits, target_ids)
  if label_smoothing:
    log_probs = jax.nn.log_softmax(logits[..., :vocab_size], axis=-1)
    token_loss = (1.0 - label_smoothing) * token_loss - label_smoothing * jnp.mean(log_probs, axis=-1)
  return token_loss, (jnp.argmax(logits, axis=-1) == target_ids).astype(jnp.float32)


def cloze_losses(token_loss: jax.Array, loss_mask: jax.Array, labels: jax.Array, candidates: int):
  """token_loss, loss_mask float [E * C, L] (each example's C candidate rows in a row); labels int [E * C, L] (the
  right candidate, on every token of its rows). Returns float32 [E] each: the cross entropy of the softmax over the
  candidates' scores (their summed log-likelihood), and 1.0 where the right candidate scores best. Rows with no
  scored token are padding candidates: they take no probability."""
  loss_mask = loss_mask.astype(jnp.float32)
  scores = -jnp.sum(token_loss * loss_mask, axis=-1).reshape(-1, candidates)
  present = jnp.sum(loss_mask, axis=-1).reshape(-1, candidates) > 0
  scores = jnp.where(present, scores, -jnp.inf)
  label = labels.reshape(-1, candidates, labels.shape[-1])[:, 0, 0]
  right = jnp.take_along_axis(scores, label[:, None], axis=-1)[:, 0]
  cross_entropy = jax.nn.logsumexp(scores, axis=-1) - right
  return cross_entropy, (jnp.argmax(scores, axis=-1) == label).astype(jnp.float32)


def _by_example(batch: dict, candidates: int) -> dict:
  """[E * C, ...] -> [E, C, ...]: each example's candidate rows together (so microbatches keep them together)."""

  def group(x):
    if x.shape[0] % candidates:
      raise ValueError(
        f"a cloze batch of {x.shape[0]} rows does not hold whole examples of {candidates} candidate rows (make "
        f"TrainConfig.batch_size a multiple of {candidates})"
      )
    return x.reshape(x.shape[0] // candidates, candidates, *x.shape[1:])

  return jax.tree.map(group, batch)


def _rows(batch: dict) -> dict:
  return jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:]), batch)


def loss_sums(logits: jax.Array, target_ids: jax.Array, loss_mask: jax.Array, vocab_size: int):
  """logits float [B, L, V]; target_ids int [B, L]; loss_mask float [B, L].

  Returns (summed cross entropy, number of correct argmax predictions), both over Part B only, float32.
  """
  loss_mask = loss_mask.astype(jnp.float32)
  token_loss, correct = token_stats(logits, target_ids, vocab_size)
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


def _objective_ids(batch: dict) -> jax.Array:
  ids = batch.get("objective_ids")
  return jnp.zeros_like(batch["target_ids"]) if ids is None else ids


def make_train_step(
  model: GLM,
  tx: optax.GradientTransformation,
  schedule: optax.Schedule | None = None,
  accumulation_steps: int = 1,
  loss_config: LossConfig = LossConfig(),
) -> Callable:
  """Returns the pure `train_step(state, batch, rng) -> (state, metrics)`.

  batch: dict of [B, L] model features; rng: a base key, folded with the step number (and the microbatch
  index) to give each step its own dropout key. Metrics are float32 scalars: loss (the weighted loss that is
  optimized), accuracy (Part B), num_tokens (Part B tokens), grad_norm, learning_rate.
  """
  vocab_size = model.config.vocab_size
  weights = loss_config.weight_vector()
  candidates = loss_config.cloze_candidates

  def microbatch_grads(params, micro, rng):
    def loss_fn(p):
      rows = _rows(micro) if candidates else micro
      logits = forward(model, p, rows, deterministic=False, dropout_rng=rng)
      token_loss, correct = token_stats(logits, rows["target_ids"], vocab_size, loss_config.label_smoothing)
      if candidates:
        cross_entropy, right = cloze_losses(token_loss, rows["loss_mask"], rows["cloze_label"], candidates)
        return jnp.sum(cross_entropy * micro["example_weight"][:, 0, 0]), jnp.sum(right)
      return jnp.sum(token_loss * micro["loss_weight"]), jnp.sum(correct * micro["loss_mask"].astype(jnp.float32))

    (loss, correct), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    return loss, correct, grads

  def train_step(state: TrainState, batch: dict, rng: jax.Array):
    step_rng = jax.random.fold_in(rng, state.step)
    num_tokens = jnp.sum(batch["loss_mask"].astype(jnp.float32))
    if candidates:  # the loss and the accuracy are over examples
      batch = _by_example(batch, candidates)
      examples = batch["loss_mask"].shape[0]
      total_tokens = jnp.float32(examples)
      batch = {**batch, "example_weight": jnp.full(batch["loss_mask"].shape, 1.0 / examples, jnp.float32)}
    else:
      total_tokens = jnp.maximum(num_tokens, 1.0)
      batch = {**batch, "loss_weight": token_weights(batch["loss_mask"], _objective_ids(batch), weights)}
    if accumulation_steps == 1:
      loss, correct, grads = microbatch_grads(state.params, batch, step_rng)
    else:

      def body(carry, xs):
        loss_acc, correct_acc, grads_acc = carry
        index, micro = xs
        loss, correct, grads = microbatch_grads(state.params, micro, jax.random.fold_in(step_rng, index))
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


def make_eval_step(model: GLM, loss_config: LossConfig = LossConfig()) -> Callable:
  """Returns `eval_step(params, batch) -> {loss_sum, correct, num_tokens, objective_loss_sums,
  objective_tokens}` (deterministic; sums, the last two [len(OBJECTIVES)] per objective id, so the caller can
  average over many batches exactly and weight the objectives as the loss does: `eval_metrics`). With
  `loss_config.cloze_candidates` the sums are over examples: the cloze cross entropy, the right predictions and
  the number of examples (as num_tokens)."""
  candidates = loss_config.cloze_candidates

  def eval_step(params, batch: dict):
    logits = forward(model, params, batch, deterministic=True)
    token_loss, correct = token_stats(logits, batch["target_ids"], model.config.vocab_size)
    loss_mask = batch["loss_mask"].astype(jnp.float32)
    if candidates:
      _by_example({"loss_mask": loss_mask}, candidates)  # whole examples, or a ValueError naming the fix
      cross_entropy, right = cloze_losses(token_loss, loss_mask, batch["cloze_label"], candidates)
      zeros = jnp.zeros(len(OBJECTIVES), jnp.float32)
      return {
        "loss_sum": jnp.sum(cross_entropy),
        "correct": jnp.sum(right),
        "num_tokens": jnp.float32(cross_entropy.shape[0]),
        "objective_loss_sums": zeros,
        "objective_tokens": zeros,
      }
    onehot = jax.nn.one_hot(_objective_ids(batch), len(OBJECTIVES), dtype=jnp.float32) * loss_mask[..., None]
    return {
      "loss_sum": jnp.sum(token_loss * loss_mask),
      "correct": jnp.sum(correct * loss_mask),
      "num_tokens": jnp.sum(loss_mask),
      "objective_loss_sums": jnp.einsum("blk,bl->k", onehot, token_loss),
      "objective_tokens": jnp.sum(onehot, axis=(0, 1)),
    }

  return eval_step


def eval_metrics(sums: Mapping[str, np.ndarray], loss_config: LossConfig = LossConfig()) -> dict[str, float]:
  """The metrics of eval_step's outputs summed over batches: loss (as the train loss weighs it), token_loss (the
  plain token mean), accuracy, and `loss_<objective>` for each objective with Part B tokens."""
  tokens = float(sums["num_tokens"])
  counts = np.asarray(sums["objective_tokens"], np.float64)
  objective_sums = np.asarray(sums["objective_loss_sums"], np.float64)
  token_loss = float(sums["loss_sum"]) / tokens
  metrics = {"loss": token_loss, "token_loss": token_loss, "accuracy": float(sums["correct"]) / tokens}
  weights = loss_config.weight_vector()
  if weights is not None:
    metrics["loss"] = float(objective_weighted_loss(objective_sums, counts, weights))
  for name, count, total in zip(OBJECTIVES, counts, objective_sums):
    if count:
      metrics[f"loss_{name}"] = float(total / count)
  return metrics


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
