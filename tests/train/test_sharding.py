"""Sharded training on the 8 host CPU devices (tests/conftest.py): state placement, activation constraints,
equality with the single-device run, and bf16 compute over float32 master weights on a mesh.

The (2, 2, 2) mesh's losses and gradient accumulation are checked in tests/train/test_step.py, remat and
scan_layers in tests/model/test_glm.py.
"""

import dataclasses
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from glm_jax.data import synthetic
from glm_jax.model import GLM, GLMConfig
from glm_jax.train import optimizer, partitioning, step
from glm_jax.train.state import TrainState

LENGTH = 16
RULES = dict(partitioning.LOGICAL_AXIS_RULES)
MESH_SHAPES = [(1, 8, 1), (1, 4, 2), (2, 2, 2), (1, 2, 4)]


def _config(**overrides) -> GLMConfig:
  """A model whose sharded dims (E, H, mlp, padded vocab) divide by every fsdp / tensor size up to 8."""
  base = dict(
    vocab_size=500, num_layers=2, hidden_size=256, num_heads=8, max_length=LENGTH, attention_implementation="xla"
  )
  return GLMConfig(**{**base, **overrides})


def _config_small(**overrides) -> GLMConfig:
  """A smaller model for the step tests (compilation dominates their time); E, mlp and the padded vocabulary
  divide by 8, the 4 heads by every tensor size used here."""
  return _config(hidden_size=64, num_heads=4, hidden_dropout=0.1, **overrides)


def _mesh(shape, devices=None):
  data, fsdp, tensor = shape
  return partitioning.make_mesh(partitioning.MeshConfig(data=data, fsdp=fsdp, tensor=tensor), devices)


def _tx(total_steps=100):
  return optimizer.make_optimizer(optimizer.OptimizerConfig(learning_rate=3e-3, warmup_steps=2), total_steps)


def _batch(seed, batch_size=8, vocab_size=500):
  return next(synthetic.synthetic_batches(batch_size, LENGTH, vocab_size, seed=seed, max_span=3))


def _normalized(axes) -> P:
  """A PartitionSpec without trailing unsharded axes (P("x", None) and P("x") mean the same)."""
  axes = list(axes)
  while axes and axes[-1] is None:
    axes.pop()
  return P(*axes)


def _expected_spec(names) -> P:
  """The oracle: each logical name looked up in the rules table."""
  return _normalized(RULES[name] if name is not None else None for name in names)


def _rule_specs(model):
  """The oracle's PartitionSpec for every param of `model`, from the logical names it declares."""
  boxed = partitioning.abstract_boxed_params(model, LENGTH)
  is_boxed = lambda x: isinstance(x, nn.LogicallyPartitioned)  # noqa: E731
  return jax.tree.map(lambda b: _expected_spec(b.names), boxed, is_leaf=is_boxed)


def _bytes_per_device(tree) -> dict:
  """Bytes of every array shard in `tree`, summed per device."""
  totals = {}
  for leaf in jax.tree.leaves(tree):
    for shard in leaf.addressable_shards:
      totals[shard.device] = totals.get(shard.device, 0) + shard.data.nbytes
  return totals


def _specs(shardings):
  return jax.tree.map(lambda s: _normalized(s.spec), shardings)


@pytest.mark.parametrize("shape", MESH_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_params_and_optimizer_state_split_over_fsdp_and_tensor(shape):
  mesh = _mesh(shape)
  model = GLM(_config())
  tx = _tx()
  state, _ = partitioning.init_state(model, tx, mesh, jax.random.key(0), LENGTH)
  total = sum(leaf.nbytes for leaf in jax.tree.leaves(state))
  per_device = _bytes_per_device(state)
  assert len(per_device) == 8
  _, fsdp, tensor = shape
  # Only the small leaves the rules cannot split both ways (position tables, biases, LayerNorms) are
  # replicated over one of the axes; with this model they cost < 5% over a perfect split.
  assert max(per_device.values()) <= 1.05 * total / (fsdp * tensor)
  # Adam's moments live exactly where their parameters do.
  params_sharding = jax.tree.map(lambda x: x.sharding, state.params)
  for moment in ("mu", "nu"):
    moments = optax.tree_utils.tree_get(state.opt_state, moment)
    assert jax.tree.map(lambda x: x.sharding, moments) == params_sharding, moment


def test_param_shardings_follow_the_rules_table():
  mesh = _mesh((2, 2, 2))
  model = GLM(_config())
  state, shardings = partitioning.init_state(model, _tx(), mesh, jax.random.key(0), LENGTH)
  expected = _rule_specs(model)
  assert jax.tree.map(lambda x: _normalized(x.sharding.spec), state.params) == expected
  assert expected["word_embeddings"]["embedding"] == P("tensor", "fsdp")
  assert expected["layers"]["attention"]["query_key_value"]["kernel"] == P(None, "fsdp", None, "tensor")
  assert expected["layers"]["mlp"]["dense_4h_to_h"]["kernel"] == P(None, "tensor", "fsdp")
  assert _specs(shardings.params) == expected


def test_abstract_state_is_the_initialized_state_without_its_values():
  mesh = _mesh((2, 2, 2))
  model = GLM(_config())
  state, shardings = partitioning.init_state(model, _tx(), mesh, jax.random.key(0), LENGTH)
  abstract, abstract_shardings = partitioning.abstract_state(model, _tx(), mesh, LENGTH)
  assert abstract_shardings == shardings
  assert jax.tree.structure(abstract) == jax.tree.structure(state)
  described = lambda x: (x.shape, x.dtype, x.sharding)  # noqa: E731
  assert jax.tree.leaves(jax.tree.map(described, abstract)) == jax.tree.leaves(jax.tree.map(described, state))
  assert all(isinstance(leaf, jax.ShapeDtypeStruct) for leaf in jax.tree.leaves(abstract))


def test_model_traces_under_a_mesh_with_fsdp_and_tensor():
  # Regression: flax's DenseGeneral applied the 4-D QKV kernel constraint to its flattened 2-D init value, so
  # tracing model.apply failed as soon as a mesh and the rules were in context.
  model = GLM(_config_small())
  batch = _batch(0)
  params = nn.unbox(partitioning.abstract_boxed_params(model, LENGTH))
  with jax.set_mesh(_mesh((1, 2, 4))), nn.logical_axis_rules(partitioning.LOGICAL_AXIS_RULES):
    logits = jax.eval_shape(lambda p, b: step.forward(model, p, b, deterministic=True), params, batch)
  assert logits.shape == (8, LENGTH, 512) and logits.dtype == jnp.float32


@dataclasses.dataclass
class Run:
  losses: np.ndarray  # [3], one per step
  params: dict  # host copy after the steps
  state: TrainState
  compiled: jax.stages.Compiled
  hlo: str  # the lowered step, before XLA's passes


@pytest.fixture(scope="module")
def run_steps():
  """run_steps(shape, **config_overrides) -> Run of 3 train steps on fixed batches, cached per argument.

  Every run uses the same init key, batches and dropout key; (1, 1, 1) runs on one device.
  """
  cache = {}

  def run(shape, **overrides):
    key = (shape, tuple(sorted(overrides.items())))
    if key not in cache:
      mesh = _mesh(shape, jax.devices()[:1] if shape == (1, 1, 1) else None)
      model = GLM(_config_small(**overrides))
      tx = _tx()
      state, shardings = partitioning.init_state(model, tx, mesh, jax.random.key(0), LENGTH)
      train_step = step.jit_train_step(step.make_train_step(model, tx), shardings, mesh)
      lowered = train_step.lower(state, partitioning.global_batch(_batch(0), mesh), jax.random.key(1))
      compiled = lowered.compile()
      losses = []
      for i in range(3):
        state, metrics = compiled(state, partitioning.global_batch(_batch(i), mesh), jax.random.key(1))
        assert metrics["loss"].dtype == jnp.float32
        losses.append(float(metrics["loss"]))
      cache[key] = Run(np.asarray(losses), jax.device_get(state.params), state, compiled, lowered.as_text())
    return cache[key]

  return run


def test_compiled_train_step_keeps_rule_shardings_and_constrains_activations(run_steps):
  run = run_steps((2, 2, 2))
  expected = _rule_specs(GLM(_config_small()))
  (in_state, in_batch, _), _ = run.compiled.input_shardings
  out_state, _ = run.compiled.output_shardings
  assert _specs(in_state.params) == expected
  assert _specs(out_state.params) == expected
  assert jax.tree.map(lambda x: _normalized(x.sharding.spec), run.state.params) == expected
  assert in_batch["input_ids"].spec == P(("data", "fsdp"))
  # The model's constraints reach the program (before, steps were traced without a mesh and flax dropped every
  # constraint): activations [B, L, E] = [8, 16, 64] batch over data x fsdp (after the embeddings, after each
  # layer), and the word table [512, 64] gathered over fsdp for the lookup.
  constraints = re.findall(r"sharding_constraint[^\n]*", run.hlo)
  activations = [c for c in constraints if "tensor<8x16x64xf32>" in c]
  assert len(activations) >= 2 and all('[{"data", "fsdp"}, {}, {}]' in c for c in activations), constraints
  assert any('[{"tensor"}, {}]> : tensor<512x64xf32>' in c for c in constraints), constraints
  assert np.isfinite(run.losses).all()


@pytest.mark.slow
@pytest.mark.parametrize("shape", [(1, 8, 1), (1, 4, 2)], ids=lambda s: "x".join(map(str, s)))
def test_sharded_losses_equal_single_device(shape, run_steps):
  # Same init key, batches and dropout key on every mesh (threefry keys are partitionable, so dropout masks do
  # not depend on the sharding). Only the float32 reduction order differs (partial sums over fsdp / tensor):
  # measured relative loss differences are ~1e-7 after three AdamW steps, so rtol=1e-5 has a 100x margin,
  # while a wrong split or a missing reduction changes the loss by > 1e-2.
  single, sharded = run_steps((1, 1, 1)), run_steps(shape)
  np.testing.assert_allclose(sharded.losses, single.losses, rtol=1e-5)
  assert sharded.losses[-1] < sharded.losses[0]
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4), sharded.params, single.params)


@pytest.mark.slow
def test_bfloat16_compute_keeps_float32_master_weights_and_optimizer_state(run_steps):
  bf16 = run_steps((1, 4, 2), dtype="bfloat16")
  assert re.search(r"dot_general[^\n]*-> tensor<[^>]*bf16>", bf16.hlo), "no bfloat16 matmul in the step"
  opt_state = bf16.state.opt_state
  leaves = jax.tree.leaves(
    (bf16.state.params, optax.tree_utils.tree_get(opt_state, "mu"), optax.tree_utils.tree_get(opt_state, "nu"))
  )
  assert {x.dtype for x in leaves} == {jnp.dtype(jnp.float32)}
  # bfloat16 keeps 8 mantissa bits: the loss moves by ~1e-3 relative, not more.
  np.testing.assert_allclose(bf16.losses, run_steps((1, 1, 1)).losses, rtol=2e-2)


@pytest.mark.parametrize(
  "implementation,platform,target",
  [("pallas_gpu", "cuda", "__gpu$xla.gpu.triton"), ("pallas_tpu", "tpu", "tpu_custom_call")],
)
def test_train_step_with_the_pallas_kernel_lowers_for_its_platform_per_shard(implementation, platform, target):
  """The whole sharded train step (scan over layers, remat, the kernel's custom_vjp with GLM's attention dropout
  inside shard_map) lowers for GPU / TPU from this CPU machine, and the kernel sees one device's rows and heads."""
  config = _config(
    hidden_size=256,
    num_heads=2,
    hidden_dropout=0.0,
    attention_dropout=0.1,
    max_length=128,
    attention_implementation=implementation,
    remat_policy="full",
  )
  mesh = _mesh((2, 2, 2))
  model = GLM(config)
  tx = optax.adamw(1e-3)
  boxed = partitioning.abstract_boxed_params(model, 128)
  shardings = partitioning.state_shardings(boxed, tx, mesh)
  abstract_params = nn.unbox(boxed)
  abstract_state = jax.eval_shape(lambda p: TrainState.create(p, tx), abstract_params)
  abstract_state = jax.tree.map(
    lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract_state, shardings
  )
  batch = {
    k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=partitioning.batch_sharding(mesh))
    for k, v in next(synthetic.synthetic_batches(8, 128, config.vocab_size)).items()
  }
  train_step = step.jit_train_step(step.make_train_step(model, tx), shardings, mesh)
  text = train_step.trace(abstract_state, batch, jax.random.key(0)).lower(lowering_platforms=(platform,)).as_text()
  calls = [line for line in text.splitlines() if f"custom_call @{target}(" in line]
  assert len(calls) >= 3  # forward, and dQ and dK/dV in the backward pass (more with remat recomputation)
  local = "2x128x1x128" if implementation == "pallas_gpu" else "2x1x128x128"  # rows 8/(2*2), heads 2/2, D 128
  for call in calls:
    assert f"tensor<{local}x" in call and "tensor<8x" not in call.split(") -> ")[0]
