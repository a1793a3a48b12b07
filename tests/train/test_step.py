import jax
import jax.numpy as jnp
import numpy as np
import pytest

from glm_jax.data import synthetic
from glm_jax.model import GLM, GLMConfig, forward
from glm_jax.train import optimizer, partitioning, step

VOCAB = 100  # padded to 128 rows
LENGTH = 32


def _config(**overrides):
  base = dict(
    vocab_size=VOCAB,
    num_layers=2,
    hidden_size=32,
    num_heads=4,
    max_length=LENGTH,
    embedding_dropout=0.0,
    attention_dropout=0.0,
    hidden_dropout=0.0,
  )
  return GLMConfig(**{**base, **overrides})


def _setup(mesh_config, accumulation_steps=1, config=None, lr=3e-3, total_steps=100, loss_config=step.LossConfig()):
  model = GLM(config or _config())
  ocfg = optimizer.OptimizerConfig(learning_rate=lr, warmup_steps=5)
  tx = optimizer.make_optimizer(ocfg, total_steps)
  mesh = partitioning.make_mesh(mesh_config)
  state, shardings = partitioning.init_state(model, tx, mesh, jax.random.key(0), LENGTH)
  train_step = step.jit_train_step(
    step.make_train_step(
      model, tx, optimizer.learning_rate_schedule(ocfg, total_steps), accumulation_steps, loss_config
    ),
    shardings,
    mesh,
  )
  return state, train_step, mesh


def _batches(batch_size=8, seed=0):
  return synthetic.synthetic_batches(batch_size, LENGTH, VOCAB, seed=seed)


def test_loss_ignores_part_a_and_padding_and_padded_vocab():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(2, 5, 8)).astype(np.float32)
  targets = rng.integers(0, 6, size=(2, 5))
  loss_mask = np.array([[0, 0, 1, 1, 0], [0, 1, 1, 1, 0]], np.float32)
  loss_sum, correct = step.loss_sums(jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(loss_mask), 6)
  # Oracle: softmax over the 6 real ids only, summed over the masked-in positions.
  real = logits[..., :6]
  logp = real - np.log(np.exp(real).sum(-1, keepdims=True))
  token_loss = -np.take_along_axis(logp, targets[..., None], -1)[..., 0]
  np.testing.assert_allclose(loss_sum, (token_loss * loss_mask).sum(), rtol=1e-5)
  np.testing.assert_allclose(correct, ((real.argmax(-1) == targets) * loss_mask).sum())
  # Changing logits outside Part B or in padded vocabulary rows changes nothing.
  perturbed = logits.copy()
  perturbed[loss_mask == 0] += 100.0
  perturbed[..., 6:] = 1e4
  again = step.loss_sums(jnp.asarray(perturbed), jnp.asarray(targets), jnp.asarray(loss_mask), 6)
  np.testing.assert_allclose(again, (loss_sum, correct), rtol=1e-6)


def test_token_weights_average_each_objective_and_weigh_them():
  loss_mask = np.array([[0, 1, 1, 1, 1, 0], [0, 1, 1, 1, 1, 1]], np.float32)
  objective_ids = np.array([[1, 1, 3, 3, 3, 0], [2, 2, 2, 3, 3, 3]], np.int32)  # token 1, sentence 2, document 6
  config = step.LossConfig(objective_weights={"token": 0.5, "sentence": 0.3, "document": 0.2})
  w = np.asarray(step.token_weights(loss_mask, objective_ids, config.weight_vector()))
  np.testing.assert_allclose(w[0], [0, 0.5, 0.2 / 6, 0.2 / 6, 0.2 / 6, 0], rtol=1e-6)
  np.testing.assert_allclose(w[1], [0, 0.3 / 2, 0.3 / 2, 0.2 / 6, 0.2 / 6, 0.2 / 6], rtol=1e-6)
  plain = np.asarray(step.token_weights(loss_mask, objective_ids, None))
  np.testing.assert_allclose(plain, loss_mask / 9, rtol=1e-6)
  # An objective the batch lacks: the others' weights are renormalized, so the weights still sum to 1.
  no_token = np.where(objective_ids == 1, 2, objective_ids)
  w = np.asarray(step.token_weights(loss_mask, no_token, config.weight_vector()))
  np.testing.assert_allclose(w[no_token == 2].sum(), 0.3 / 0.5, rtol=1e-6)
  np.testing.assert_allclose(w.sum(), 1.0, rtol=1e-6)
  # Objectives the weights do not name are not trained on.
  w = np.asarray(step.token_weights(loss_mask, objective_ids, step.LossConfig({"document": 1.0}).weight_vector()))
  np.testing.assert_allclose(w, np.where(objective_ids == 3, loss_mask / 6, 0), rtol=1e-6)
  with pytest.raises(ValueError, match="unknown: \\['span'\\]"):
    step.LossConfig({"span": 1.0})
  with pytest.raises(ValueError, match="positive sum"):
    step.LossConfig({"token": 0.0})


def test_the_weighted_train_loss_and_the_eval_losses_per_objective():
  """The train step optimizes the weighted loss; eval reports it, the token mean and each objective's loss."""
  batch = dict(next(_batches(batch_size=8)))
  batch["objective_ids"] = np.repeat(np.array([1, 1, 1, 1, 2, 2, 3, 3], np.int32)[:, None], LENGTH, axis=1)
  config = step.LossConfig({"token": 0.5, "sentence": 0.3, "document": 0.2})
  model = GLM(_config())
  mesh = partitioning.make_mesh(partitioning.MeshConfig(data=2, fsdp=2, tensor=2))  # global sums over shards
  ocfg = optimizer.OptimizerConfig(warmup_steps=5)
  tx = optimizer.make_optimizer(ocfg, 10)
  state, shardings = partitioning.init_state(model, tx, mesh, jax.random.key(0), LENGTH)
  train_step = step.jit_train_step(step.make_train_step(model, tx, loss_config=config), shardings, mesh)
  eval_step = step.jit_eval_step(step.make_eval_step(model), shardings.params, mesh)
  out = jax.device_get(eval_step(state.params, partitioning.global_batch(batch, mesh)))
  # Oracle: each objective's token mean, weighted by the rates (logits first: the train step donates the state).
  logits = jax.jit(lambda p: forward(model, p, batch, deterministic=True))(state.params)
  logits = np.asarray(logits, np.float64)[..., :VOCAB]
  _, metrics = train_step(state, partitioning.global_batch(batch, mesh), jax.random.key(1))
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  token_loss = -np.take_along_axis(logp, batch["target_ids"][..., None], -1)[..., 0]
  mask = batch["loss_mask"]
  means = {o: (token_loss * mask)[batch["objective_ids"] == i].sum() / mask[batch["objective_ids"] == i].sum()
           for o, i in (("token", 1), ("sentence", 2), ("document", 3))}  # fmt: skip
  weighted = 0.5 * means["token"] + 0.3 * means["sentence"] + 0.2 * means["document"]
  np.testing.assert_allclose(float(metrics["loss"]), weighted, rtol=1e-4)
  evaluated = step.eval_metrics(out, config)
  np.testing.assert_allclose(evaluated["loss"], weighted, rtol=1e-4)
  np.testing.assert_allclose(evaluated["token_loss"], (token_loss * mask).sum() / mask.sum(), rtol=1e-4)
  for name, mean in means.items():
    np.testing.assert_allclose(evaluated[f"loss_{name}"], mean, rtol=1e-4)
  assert "loss_other" not in evaluated
  assert step.eval_metrics(out)["loss"] == evaluated["token_loss"]


@pytest.mark.slow
@pytest.mark.parametrize("weighted", [False, True], ids=["token_mean", "per_objective"])
def test_accumulated_step_equals_big_batch_step(weighted):
  batch = dict(next(_batches(batch_size=8)))
  # Microbatch i holds rows i, i+4: each one sees some objectives only, so per-microbatch weights would differ.
  batch["objective_ids"] = np.repeat(np.array([1, 1, 2, 3, 1, 2, 2, 3], np.int32)[:, None], LENGTH, axis=1)
  loss_config = step.LossConfig({"token": 0.5, "sentence": 0.3, "document": 0.2} if weighted else None)
  mesh_config = partitioning.MeshConfig(data=2, fsdp=2, tensor=2)
  results = []
  for n in (1, 4):
    state, train_step, mesh = _setup(mesh_config, accumulation_steps=n, loss_config=loss_config)
    state, metrics = train_step(state, partitioning.global_batch(batch, mesh), jax.random.key(1))
    state, metrics = train_step(state, partitioning.global_batch(batch, mesh), jax.random.key(1))
    results.append((jax.device_get(state.params), jax.device_get(metrics)))
  (params_1, metrics_1), (params_4, metrics_4) = results
  for k in ("loss", "accuracy", "grad_norm", "num_tokens"):
    np.testing.assert_allclose(metrics_4[k], metrics_1[k], rtol=1e-5, err_msg=k)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=2e-6, rtol=1e-4), params_4, params_1)


@pytest.mark.slow
def test_sharded_step_matches_single_device():
  batch = next(_batches(batch_size=8))
  outs = []
  for mesh_config, devices in (
    (partitioning.MeshConfig(data=2, fsdp=2, tensor=2), None),
    (partitioning.MeshConfig(data=1), jax.devices()[:1]),
  ):
    model = GLM(_config())
    ocfg = optimizer.OptimizerConfig(learning_rate=3e-3, warmup_steps=5)
    tx = optimizer.make_optimizer(ocfg, 100)
    mesh = partitioning.make_mesh(mesh_config, devices)
    state, shardings = partitioning.init_state(model, tx, mesh, jax.random.key(0), LENGTH)
    train_step = step.jit_train_step(step.make_train_step(model, tx), shardings, mesh)
    losses = []
    for _ in range(3):
      state, metrics = train_step(state, partitioning.global_batch(batch, mesh), jax.random.key(1))
      losses.append(float(metrics["loss"]))
    outs.append((losses, state))
  (sharded_losses, sharded_state), (single_losses, _) = outs
  np.testing.assert_allclose(sharded_losses, single_losses, rtol=1e-5)
  assert sharded_losses[-1] < sharded_losses[0]
  # The 2x2x2 mesh really shards: the word embedding [V, E] is split over tensor x fsdp.
  emb = sharded_state.params["word_embeddings"]["embedding"]
  assert emb.sharding.spec == jax.sharding.PartitionSpec("tensor", "fsdp")
  assert emb.addressable_shards[0].data.shape == (64, 16)


@pytest.mark.slow
def test_dropout_differs_per_step_but_is_reproducible():
  # lr 0 keeps the params fixed, so the loss changes only through the dropout key folded from the step.
  state, train_step, mesh = _setup(partitioning.MeshConfig(), config=_config(hidden_dropout=0.5), lr=0.0)
  batch = partitioning.global_batch(next(_batches()), mesh)
  losses = []
  for _ in range(2):
    state, metrics = train_step(state, batch, jax.random.key(7))
    losses.append(float(metrics["loss"]))
  state, metrics = train_step(state.replace(step=jnp.zeros((), jnp.int32)), batch, jax.random.key(7))
  assert losses[0] != losses[1]
  assert float(metrics["loss"]) == losses[0]


@pytest.mark.slow
def test_short_training_run_learns_synthetic_task():
  # One device: the run checks learning, not sharding (test_sharded_step_matches_single_device does that).
  vocab = 40  # 32 ordinary token ids
  model = GLM(_config(hidden_size=64, vocab_size=vocab))
  ocfg = optimizer.OptimizerConfig(learning_rate=3e-3, warmup_steps=10)
  tx = optimizer.make_optimizer(ocfg, 200)
  mesh = partitioning.make_mesh(partitioning.MeshConfig(), jax.devices()[:1])
  state, shardings = partitioning.init_state(model, tx, mesh, jax.random.key(0), LENGTH)
  train_step = step.jit_train_step(step.make_train_step(model, tx), shardings, mesh)
  batches = synthetic.synthetic_batches(16, LENGTH, vocab)
  losses = []
  for _ in range(200):
    state, metrics = train_step(state, partitioning.global_batch(next(batches), mesh), jax.random.key(1))
    losses.append(float(metrics["loss"]))
  assert np.mean(losses[:5]) > 3.0  # ~ log(32 token ids) at the start
  assert np.mean(losses[-10:]) < 0.3 * np.mean(losses[:5])


def test_the_eval_line_names_each_objectives_loss():
  from glm_jax.train import loop

  assert loop.eval_line(5, {"loss": 2.0, "accuracy": 0.5, "token_loss": 2.0, "loss_token": 2.0}) == (
    "step 5: eval loss 2.0000 accuracy 0.500"
  )
  metrics = {"loss": 2.0, "accuracy": 0.5, "token_loss": 2.1, "loss_token": 1.5, "loss_document": 3.25}
  assert loop.eval_line(5, metrics) == "step 5: eval loss 2.0000 accuracy 0.500 (token 1.500, document 3.250)"


def _cloze_batch(rng, examples=2, candidates=4):
  """Each example's candidate rows one after the other; the last example has a padding candidate (no scored
  token); the right candidate differs per example."""
  batch = dict(next(_batches(batch_size=examples * candidates)))
  labels = rng.integers(0, candidates - 1, examples)
  batch["cloze_label"] = np.repeat(labels, candidates)[:, None].repeat(LENGTH, axis=1).astype(np.int32)
  batch["loss_mask"] = batch["loss_mask"].copy()
  batch["loss_mask"][-1] = 0.0  # the last example's last candidate is padding
  return batch, labels


def test_the_cloze_cross_entropy_and_its_gradient_equal_a_direct_restatement():
  """The reference's cross-entropy loss: per example, softmax over its candidates' summed log-likelihoods."""
  import optax

  rng = np.random.default_rng(0)
  batch, labels = _cloze_batch(rng)
  model = GLM(_config())
  mesh = partitioning.make_mesh(partitioning.MeshConfig(data=-1))
  tx = optax.sgd(1.0)  # new params = params - gradient
  results = []
  for accumulation in (1, 2):
    state, shardings = partitioning.init_state(model, tx, mesh, jax.random.key(0), LENGTH)
    params = jax.device_get(state.params)
    config = step.LossConfig(cloze_candidates=4)
    train_step = step.jit_train_step(
      step.make_train_step(model, tx, accumulation_steps=accumulation, loss_config=config), shardings, mesh
    )
    new_state, metrics = train_step(state, partitioning.global_batch(batch, mesh), jax.random.key(1))
    results.append((params, jax.device_get(new_state.params), jax.device_get(metrics)))

  def direct(p):
    logits = forward(model, p, batch, deterministic=True)
    logp = jax.nn.log_softmax(logits[..., :VOCAB], axis=-1)
    picked = jnp.take_along_axis(logp, batch["target_ids"][..., None], -1)[..., 0]
    scores = jnp.sum(picked * batch["loss_mask"], axis=-1)
    total = 0.0
    for e, label in enumerate(labels):
      rows = [4 * e + c for c in range(4) if batch["loss_mask"][4 * e + c].any()]
      total += jax.nn.logsumexp(jnp.stack([scores[r] for r in rows])) - scores[4 * e + label]
    return total / len(labels)

  params = results[0][0]
  loss, grads = jax.value_and_grad(direct)(params)
  for before, after, metrics in results:
    np.testing.assert_allclose(metrics["loss"], loss, rtol=1e-5)
    got = jax.tree.map(lambda b, a: b - a, before, after)
    jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, rtol=2e-4, atol=1e-6), got, jax.device_get(grads))
    assert 0.0 <= metrics["accuracy"] <= 1.0
  out = jax.jit(step.make_eval_step(model, step.LossConfig(cloze_candidates=4)))(params, batch)
  evaluated = step.eval_metrics(jax.device_get(out), step.LossConfig(cloze_candidates=4))
  np.testing.assert_allclose(evaluated["loss"], loss, rtol=1e-5)
  with pytest.raises(ValueError, match="multiple of 3"):
    step.make_eval_step(model, step.LossConfig(cloze_candidates=3))(params, batch)
  with pytest.raises(ValueError, match="at least 2 candidates"):
    step.LossConfig(cloze_candidates=1)


def test_label_smoothing_trains_on_the_references_smoothed_loss_and_evaluates_the_plain_one():
  """(1 - eps) x cross entropy + eps x the mean -log p over the real vocabulary, per Part B token, token-averaged;
  its gradient as a direct re-statement's; the eval loss stays the plain cross entropy."""
  import optax

  batch = next(_batches(seed=3))
  model = GLM(_config())
  mesh = partitioning.make_mesh(partitioning.MeshConfig(data=-1))
  tx = optax.sgd(1.0)
  state, shardings = partitioning.init_state(model, tx, mesh, jax.random.key(0), LENGTH)
  params = jax.device_get(state.params)
  config = step.LossConfig(label_smoothing=0.1)
  train_step = step.jit_train_step(step.make_train_step(model, tx, loss_config=config), shardings, mesh)
  new_state, metrics = train_step(state, partitioning.global_batch(batch, mesh), jax.random.key(1))
  mask = batch["loss_mask"].astype(np.float32)

  def direct(p, eps):
    logp = jax.nn.log_softmax(forward(model, p, batch, deterministic=True)[..., :VOCAB], axis=-1)
    nll = -jnp.take_along_axis(logp, batch["target_ids"][..., None], -1)[..., 0]
    smooth = -jnp.sum(logp, axis=-1) / VOCAB
    return jnp.sum(((1 - eps) * nll + eps * smooth) * mask) / mask.sum()

  loss, grads = jax.value_and_grad(direct)(params, 0.1)
  np.testing.assert_allclose(metrics["loss"], loss, rtol=1e-5)
  got = jax.tree.map(lambda b, a: b - a, params, jax.device_get(new_state.params))
  jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, rtol=2e-4, atol=1e-6), got, jax.device_get(grads))
  plain = jax.grad(direct)(params, 0.0)  # the smoothing changes the gradient (near-uniform at init: not the loss)
  differs = [not np.allclose(g, p, rtol=1e-2, atol=0) for g, p in zip(jax.tree.leaves(grads), jax.tree.leaves(plain))]
  assert any(differs)
  out = jax.jit(step.make_eval_step(model, config))(params, batch)
  np.testing.assert_allclose(step.eval_metrics(jax.device_get(out), config)["loss"], direct(params, 0.0), rtol=1e-5)
  for wrong in (dict(label_smoothing=1.0), dict(label_smoothing=-0.1), dict(label_smoothing=0.1, cloze_candidates=2)):
    with pytest.raises(ValueError, match="label_smoothing"):
      step.LossConfig(**wrong)
