import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from glm_jax.model import GLM, mask_padded_vocab, preset, stack_layers, unstack_layers

IMPLEMENTATIONS = ("reference", "xla")
LOGICAL_NAMES = {"vocab", "embed", "heads", "kv", "mlp", "layers", None}

# One packed row of L=20: segment 1 = tokens 0..9 with Part A = 0..5; segment 2 = tokens 10..17 with
# Part A = 10..12; tokens 18, 19 are padding.
L = 20
SEGMENT_IDS = np.array([[1] * 10 + [2] * 8 + [0] * 2], np.int32)
SEP = np.array([[6] * 10 + [3] * 8 + [0] * 2], np.int32)
POSITIONS = np.array([[0, 1, 2, 3, 4, 5, 2, 2, 4, 4, 0, 1, 2, 1, 1, 1, 2, 2, 0, 0]], np.int32)
BLOCK_POSITIONS = np.array([[0] * 6 + [1, 2, 1, 2] + [0] * 3 + [1, 2, 3, 1, 2] + [0] * 2], np.int32)


def tiny(**overrides):
  return preset("tiny", vocab_size=256, max_length=32, **overrides)


def init(config, batch=1, length=L):
  ids = jnp.zeros((batch, length), jnp.int32)
  variables = GLM(config).init(jax.random.key(0), ids, ids, ids, sep=jnp.full((batch,), length // 2))
  return nn.unbox(variables["params"])


def forward(config, params, input_ids, segment_ids=SEGMENT_IDS, sep=SEP):
  return GLM(config).apply(
    {"params": params}, jnp.asarray(input_ids), POSITIONS, BLOCK_POSITIONS, sep=sep, segment_ids=segment_ids
  )


def changed_positions(a, b):
  return set(np.flatnonzero(np.abs(np.asarray(a) - np.asarray(b)).max(-1)[0] > 1e-6).tolist())


@pytest.fixture(scope="module")
def tokens():
  return np.random.default_rng(0).integers(10, 250, size=(1, L)).astype(np.int32)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_part_b_token_never_changes_part_a_or_earlier_b(implementation, tokens):
  config = tiny(attention_implementation=implementation)
  params = init(config)
  perturbed = tokens.copy()
  perturbed[0, 8] += 1  # a Part B token of segment 1
  changed = changed_positions(forward(config, params, tokens), forward(config, params, perturbed))
  assert changed == {8, 9}


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_part_a_token_changes_every_position_of_its_segment_only(implementation, tokens):
  config = tiny(attention_implementation=implementation)
  params = init(config)
  perturbed = tokens.copy()
  perturbed[0, 2] += 1  # a Part A token of segment 1
  changed = changed_positions(forward(config, params, tokens), forward(config, params, perturbed))
  assert changed == set(range(10))
  perturbed = tokens.copy()
  perturbed[0, 11] += 1  # a Part A token of segment 2
  changed = changed_positions(forward(config, params, tokens), forward(config, params, perturbed))
  assert changed == set(range(10, 18))


def test_packed_segment_equals_the_same_example_alone(tokens):
  config = tiny(attention_implementation="reference")
  params = init(config)
  packed = forward(config, params, tokens)
  alone = GLM(config).apply(
    {"params": params}, tokens[:, 10:18], POSITIONS[:, 10:18], BLOCK_POSITIONS[:, 10:18], sep=jnp.array([3])
  )
  np.testing.assert_allclose(packed[:, 10:18], alone, atol=1e-5)


def test_per_example_sep_equals_per_token_sep(tokens):
  config = tiny(attention_implementation="reference")
  params = init(config)
  ones = np.ones_like(SEGMENT_IDS)
  per_example = forward(config, params, tokens, segment_ids=None, sep=jnp.array([7]))
  per_token = forward(config, params, tokens, segment_ids=ones, sep=np.full_like(SEP, 7))
  np.testing.assert_array_equal(per_example, per_token)


def test_scanned_and_per_layer_models_agree(tokens):
  scanned = tiny(attention_implementation="reference")
  looped = scanned.replace(scan_layers=False)
  params = init(looped)
  assert set(params) >= {"layers_0", "layers_1"}
  stacked = stack_layers(params, looped.num_layers)
  np.testing.assert_allclose(forward(looped, params, tokens), forward(scanned, stacked, tokens), atol=1e-5)
  roundtrip = unstack_layers(stacked, looped.num_layers)
  jax.tree.map(np.testing.assert_array_equal, roundtrip, params)


@pytest.mark.parametrize(
  "policy, scan_layers", [("none", True), ("minimal", True), ("full", True), ("minimal", False), ("full", False)]
)
def test_remat_and_scan_change_neither_outputs_nor_gradients(policy, scan_layers, tokens):
  # Oracle: the per-layer loop without remat. Remat only recomputes and scan only restructures the same
  # float32 ops, so outputs and gradients agree to rounding (1e-6 on values of order 1e-2..1).
  reference = tiny(attention_implementation="reference", scan_layers=False)
  params = init(reference)
  config = reference.replace(remat_policy=policy, scan_layers=scan_layers)
  to_config = (lambda p: stack_layers(p, config.num_layers)) if scan_layers else (lambda p: p)

  def loss(p, cfg):
    return jnp.mean(forward(cfg, p, tokens) ** 2)

  l_ref, g_ref = jax.value_and_grad(loss)(params, reference)
  l_cfg, g_cfg = jax.value_and_grad(lambda p: loss(to_config(p), config))(params)
  np.testing.assert_allclose(l_cfg, l_ref, rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), g_ref, g_cfg)


@pytest.mark.slow
def test_remat_shrinks_the_compiled_backward_memory():
  # With scan_layers (the default) XLA keeps the recomputation inside the backward loop, so the policies order
  # the compiled program's temporary memory: full < minimal < none. (Without scan, XLA on CPU schedules the
  # recomputation early and the saving disappears; docs/benchmarks.md shows both.)
  ids = jnp.zeros((8, 32), jnp.int32)
  temp = {}
  for policy in ("none", "minimal", "full"):
    model = GLM(tiny(num_layers=4, remat_policy=policy, attention_implementation="reference"))
    params = jax.eval_shape(lambda: nn.unbox(model.init(jax.random.key(0), ids, ids, ids, sep=jnp.full((8,), 16))))
    loss = lambda p, ids: jnp.mean(model.apply(p, ids, ids, ids, sep=jnp.full((8,), 16)) ** 2)  # noqa: E731
    temp[policy] = jax.jit(jax.grad(loss)).lower(params, ids).compile().memory_analysis().temp_size_in_bytes
  assert temp["full"] < temp["minimal"] < 0.6 * temp["none"], temp


def test_dropout_is_random_only_in_training(tokens):
  config = tiny(attention_implementation="reference")
  params = init(config)
  model = GLM(config)
  args = (tokens, POSITIONS, BLOCK_POSITIONS)
  kwargs = dict(sep=SEP, segment_ids=SEGMENT_IDS)
  eval_a = model.apply({"params": params}, *args, **kwargs)
  eval_b = model.apply({"params": params}, *args, **kwargs, deterministic=True)
  np.testing.assert_array_equal(eval_a, eval_b)

  def train(seed):
    return model.apply({"params": params}, *args, **kwargs, deterministic=False, rngs={"dropout": jax.random.key(seed)})

  np.testing.assert_array_equal(train(1), train(1))
  assert np.abs(train(1) - train(2)).max() > 1e-3
  assert np.abs(train(1) - eval_a).max() > 1e-3


def test_every_parameter_has_logical_axis_names():
  config = tiny(attention_implementation="reference")
  ids = jnp.zeros((1, 8), jnp.int32)
  boxed = jax.eval_shape(lambda: GLM(config).init(jax.random.key(0), ids, ids, ids, sep=jnp.array([4])))
  leaves = jax.tree.leaves(boxed["params"], is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
  assert leaves and all(isinstance(x, nn.LogicallyPartitioned) for x in leaves)
  for leaf in leaves:
    assert len(leaf.names) == leaf.value.ndim
    assert set(leaf.names) <= LOGICAL_NAMES
  layer_leaves = jax.tree.leaves(boxed["params"]["layers"], is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
  assert all(leaf.names[0] == "layers" for leaf in layer_leaves)


def test_initialization_scales():
  config = preset(
    "tiny",
    vocab_size=256,
    hidden_size=256,
    num_heads=4,
    num_layers=8,
    max_length=32,
    scan_layers=False,
    attention_implementation="reference",
  )
  params = init(config, length=8)
  out_std = 0.02 / np.sqrt(2 * config.num_layers)
  assert np.std(params["layers_3"]["attention"]["dense"]["kernel"]) == pytest.approx(out_std, rel=0.05)
  assert np.std(params["layers_3"]["mlp"]["dense_4h_to_h"]["kernel"]) == pytest.approx(out_std, rel=0.05)
  assert np.std(params["layers_3"]["mlp"]["dense_h_to_4h"]["kernel"]) == pytest.approx(0.02, rel=0.05)
  assert np.std(params["word_embeddings"]["embedding"]) == pytest.approx(0.02, rel=0.05)
  np.testing.assert_array_equal(params["final_layernorm"]["norm"]["scale"], 1.0)


def test_logits_are_tied_to_word_embeddings(tokens):
  config = tiny(attention_implementation="reference")
  params = init(config)
  logits = forward(config, params, tokens)
  assert logits.shape == (1, L, config.padded_vocab_size) and logits.dtype == jnp.float32
  scaled = jax.tree.map(lambda x: x, params)
  scaled["word_embeddings"]["embedding"] = params["word_embeddings"]["embedding"].at[5].set(0.0)
  # Row 5 of the table is token 5's output embedding: zeroing it zeroes logit 5 everywhere.
  np.testing.assert_array_equal(
    GLM(config).apply({"params": scaled}, tokens, POSITIONS, BLOCK_POSITIONS, sep=SEP, segment_ids=SEGMENT_IDS)[..., 5],
    0.0,
  )


def test_bfloat16_compute_runs_and_stays_close(tokens):
  config = tiny(attention_implementation="reference")
  params = init(config)
  f32 = forward(config, params, tokens)
  bf16 = forward(config.replace(dtype="bfloat16"), params, tokens)
  assert bf16.dtype == jnp.float32 and np.isfinite(bf16).all()
  assert np.abs(bf16 - f32).max() < 0.05 * np.abs(f32).max()


def test_too_long_input_names_the_limit():
  config = tiny(attention_implementation="reference")
  params = init(config)
  ids = jnp.zeros((1, 40), jnp.int32)
  with pytest.raises(ValueError, match="sequence length 40 exceeds max_length=32"):
    GLM(config).apply({"params": params}, ids, ids, ids, sep=jnp.array([3]))


def test_padded_vocab_logits_get_no_probability():
  logits = jnp.full((1, 1, 8), 50.0)
  masked = mask_padded_vocab(logits, 5)
  probs = jax.nn.softmax(masked, axis=-1)
  np.testing.assert_array_equal(probs[0, 0, 5:], 0.0)
  np.testing.assert_allclose(probs[0, 0, :5], 0.2, rtol=1e-6)
