import jax
import jax.numpy as jnp
import numpy as np
import pytest

from glm_jax.data import synthetic
from glm_jax.model import GLM, GLMConfig
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


def _setup(mesh_config, accumulation_steps=1, config=None, lr=3e-3, total_steps=100):
  model = GLM(config or _config())
  ocfg = optimizer.OptimizerConfig(learning_rate=lr, warmup_steps=5)
  tx = optimizer.make_optimizer(ocfg, total_steps)
  mesh = partitioning.make_mesh(mesh_config)
  state, shardings = partitioning.init_state(model, tx, mesh, jax.random.key(0), LENGTH)
  train_step = step.jit_train_step(
    step.make_train_step(model, tx, optimizer.learning_rate_schedule(ocfg, total_steps), accumulation_steps),
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


@pytest.mark.slow
def test_accumulated_step_equals_big_batch_step():
  batch = next(_batches(batch_size=8))
  mesh_config = partitioning.MeshConfig(data=2, fsdp=2, tensor=2)
  results = []
  for n in (1, 4):
    state, train_step, mesh = _setup(mesh_config, accumulation_steps=n)
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
