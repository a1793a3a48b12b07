"""THUDM PyTorch checkpoints -> glm-jax: both formats, model-parallel merge, export, and logits parity.

Two oracles. `ReferenceGLM` below is our own reading of the THUDM GLMModel, written for these tests (pre-LN, fused
QKV with rows Q|K|V, ltor mask with Part A opened per example, scores scaled by 1/sqrt(D) and masked with
-10000, tanh GELU, LayerNorm eps 1e-5, tied output): it checks both checkpoint formats and the model-parallel
merge, but an error in our reading would be in both sides. The independent one is the fixture the reference code
itself produced (../shared/fixtures/thudm_glm_tiny: its weights and its logits,
test_logits_match_the_logits_the_reference_code_produced), skipped where that folder is absent.
The reference masks with -10000 where glm-jax uses the float32 minimum; every row sees at least its own position,
so exp(-10000 - max) underflows to exactly 0 in float32 and both give the same probabilities.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import math
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from glm_jax import convert  # noqa: E402
from glm_jax.convert import pytorch as pt  # noqa: E402
from glm_jax.model import GLM, preset  # noqa: E402

V, E, H, LAYERS, MAX_LEN = 256, 32, 4, 2, 16
D = E // H


class ReferenceLayer(torch.nn.Module):
  def __init__(self):
    super().__init__()
    self.input_layernorm = torch.nn.LayerNorm(E, eps=1e-5)
    self.attention = torch.nn.Module()
    self.attention.query_key_value = torch.nn.Linear(E, 3 * E)
    self.attention.dense = torch.nn.Linear(E, E)
    self.post_attention_layernorm = torch.nn.LayerNorm(E, eps=1e-5)
    self.mlp = torch.nn.Module()
    self.mlp.dense_h_to_4h = torch.nn.Linear(E, 4 * E)
    self.mlp.dense_4h_to_h = torch.nn.Linear(4 * E, E)

  def forward(self, h, ltor_mask):
    b, length, _ = h.shape
    q, k, v = self.attention.query_key_value(self.input_layernorm(h)).chunk(3, dim=-1)
    heads = lambda x: x.view(b, length, H, D).permute(0, 2, 1, 3)  # noqa: E731
    q, k, v = heads(q), heads(k), heads(v)
    scores = torch.matmul(q / math.sqrt(D), k.transpose(-1, -2))
    scores = scores * ltor_mask - 10000.0 * (1.0 - ltor_mask)
    context = torch.matmul(torch.softmax(scores, dim=-1), v).permute(0, 2, 1, 3).reshape(b, length, E)
    h = h + self.attention.dense(context)
    x = self.mlp.dense_h_to_4h(self.post_attention_layernorm(h))
    x = 0.5 * x * (1.0 + torch.tanh(0.7978845608 * (x + 0.044715 * x * x * x)))
    return h + self.mlp.dense_4h_to_h(x)


class ReferenceGLM(torch.nn.Module):
  """THUDM GLMModel with block_position_encoding, dropout off, logits = LN_final(h) @ word_embeddings.T."""

  def __init__(self):
    super().__init__()
    self.word_embeddings = torch.nn.Embedding(V, E)
    self.transformer = torch.nn.Module()
    self.transformer.position_embeddings = torch.nn.Embedding(MAX_LEN + 1, E)
    self.transformer.block_position_embeddings = torch.nn.Embedding(MAX_LEN + 1, E)
    self.transformer.layers = torch.nn.ModuleList([ReferenceLayer() for _ in range(LAYERS)])
    self.transformer.final_layernorm = torch.nn.LayerNorm(E, eps=1e-5)

  def forward(self, input_ids, position_ids, sep):
    """input_ids [B, L]; position_ids [B, 2, L] (positions, block positions); sep [B]."""
    b, length = input_ids.shape
    mask = torch.ones(length, length).tril().unsqueeze(0).repeat(b, 1, 1)
    for i in range(b):
      mask[i, :, : int(sep[i])] = 1
    mask = mask.unsqueeze(1)
    t = self.transformer
    h = (
      self.word_embeddings(input_ids)
      + t.position_embeddings(position_ids[:, 0])
      + t.block_position_embeddings(position_ids[:, 1])
    )
    for layer in t.layers:
      h = layer(h, mask)
    return torch.nn.functional.linear(t.final_layernorm(h), self.word_embeddings.weight)


def reference_model(seed: int = 0) -> ReferenceGLM:
  """Random weights everywhere, LayerNorm scales away from 1 and biases away from 0."""
  torch.manual_seed(seed)
  model = ReferenceGLM()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "layernorm" in name and name.endswith("weight"):
        p.copy_(1.0 + 0.2 * torch.randn_like(p))
      elif name.endswith("bias"):
        p.copy_(0.2 * torch.randn_like(p))
      else:
        p.copy_(0.3 * torch.randn_like(p))
  return model.eval()


def hf_config(**changes) -> dict:
  return {
    "num_layers": LAYERS,
    "hidden_size": E,
    "num_attention_heads": H,
    "max_sequence_length": MAX_LEN,
    "vocab_size": V,
    "block_position_encoding": True,
    **changes,
  }


def write_hf(directory, state_dict, config=None):
  directory.mkdir(parents=True, exist_ok=True)
  torch.save(dict(state_dict), directory / "pytorch_model.bin")
  (directory / "config.json").write_text(json.dumps(config or hf_config()))
  return directory


def split_for_rank(state_dict, rank: int, ranks: int) -> dict:
  """One Megatron model-parallel rank's shard, written from the reference's partitioning rules."""

  def chunk(x, dim):
    size = x.shape[dim] // ranks
    return x.narrow(dim, rank * size, size).clone()

  shard = {}
  for key, x in state_dict.items():
    if key == "word_embeddings.weight" or "dense_h_to_4h" in key:
      shard[key] = chunk(x, 0)
    elif "query_key_value" in key:  # this rank's heads of Q, of K and of V, stacked
      shard[key] = torch.cat([chunk(part, 0) for part in x.chunk(3, dim=0)], dim=0)
    elif key.endswith(("attention.dense.weight", "dense_4h_to_h.weight")):
      shard[key] = chunk(x, 1)
    else:
      shard[key] = x.clone()
  return shard


def write_megatron(directory, state_dict, ranks: int, iteration: str = "1000"):
  (directory / iteration).mkdir(parents=True)
  (directory / "latest_checkpointed_iteration.txt").write_text(iteration)
  for r in range(ranks):
    torch.save(
      {"module": split_for_rank(state_dict, r, ranks), "iteration": int(iteration)},
      directory / iteration / f"mp_rank_{r:02d}_model_states.pt",
    )
  return directory


def random_batch(seed: int = 0, batch: int = 3, length: int = 12):
  rng = np.random.default_rng(seed)
  input_ids = rng.integers(0, V, (batch, length))
  positions = rng.integers(0, MAX_LEN + 1, (batch, 2, length))
  sep = rng.integers(1, length + 1, (batch,))
  return input_ids, positions, sep


def torch_logits(model, input_ids, positions, sep) -> np.ndarray:
  with torch.no_grad():
    return model(torch.from_numpy(input_ids), torch.from_numpy(positions), torch.from_numpy(sep)).numpy()


@functools.cache
def _jitted_apply(config):
  return jax.jit(
    lambda params, ids, pos, block, sep: GLM(config).apply(
      {"params": params}, ids, pos, block, sep=sep, deterministic=True
    )
  )


def jax_logits(config, params, input_ids, positions, sep) -> np.ndarray:
  return np.asarray(_jitted_apply(config)(params, input_ids, positions[:, 0], positions[:, 1], sep))


def assert_trees_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("implementation", ["reference", None])
def test_logits_match_reference_model(tmp_path, implementation):
  model = reference_model()
  config, params = convert.from_pytorch(
    write_hf(tmp_path / "hf", model.state_dict()), attention_implementation=implementation
  )
  assert (config.vocab_size, config.hidden_size, config.num_heads, config.num_layers, config.max_length) == (
    V,
    E,
    H,
    LAYERS,
    MAX_LEN,
  )
  for seed in range(3):
    batch = random_batch(seed)
    expected = torch_logits(model, *batch)
    assert np.abs(expected).max() > 1.0  # the check below is not vacuous
    np.testing.assert_allclose(jax_logits(config, params, *batch), expected, atol=1e-4, rtol=0)


def test_parity_detects_a_wrong_head_layout(tmp_path):
  model = reference_model()
  sd = model.state_dict()
  config, params = convert.from_pytorch(write_hf(tmp_path / "hf", sd))
  # Reading the fused QKV rows as interleaved per head ([q_n; k_n; v_n] for each head n) changes the logits.
  wrong = {k: v.clone() for k, v in sd.items()}
  for i in range(LAYERS):
    key = f"transformer.layers.{i}.attention.query_key_value.weight"
    wrong[key] = sd[key].view(3, H, D, E).permute(1, 0, 2, 3).reshape(3 * E, E)
  _, wrong_params = convert.from_pytorch(write_hf(tmp_path / "wrong", wrong))
  batch = random_batch()
  assert np.abs(jax_logits(config, wrong_params, *batch) - torch_logits(model, *batch)).max() > 1e-2


@pytest.mark.parametrize("ranks", [1, 2])
def test_megatron_format_merges_model_parallel_ranks(tmp_path, ranks):
  model = reference_model(seed=1)
  sd = model.state_dict()
  _, hf_params = convert.from_pytorch(write_hf(tmp_path / "hf", sd))
  config, params = convert.from_pytorch(write_megatron(tmp_path / "mp", sd, ranks), num_heads=H)
  assert config.num_heads == H and config.num_layers == LAYERS
  assert_trees_equal(params, hf_params)
  batch = random_batch(seed=4)
  np.testing.assert_allclose(jax_logits(config, params, *batch), torch_logits(model, *batch), atol=1e-4, rtol=0)


def test_megatron_release_tag_and_latest_tracker(tmp_path):
  sd = reference_model().state_dict()
  directory = tmp_path / "mp"
  (directory / "release").mkdir(parents=True)
  (directory / "latest").write_text("release\n")
  for r in range(2):
    torch.save({"module": split_for_rank(sd, r, 2)}, directory / "release" / f"mp_rank_{r:02d}_model_states.pt")
  _, params = convert.from_pytorch(directory, num_heads=H)
  _, expected = convert.from_pytorch(write_hf(tmp_path / "hf", sd))
  assert_trees_equal(params, expected)


def test_without_config_json_heads_are_required(tmp_path):
  sd = reference_model().state_dict()
  directory = write_megatron(tmp_path / "mp", sd, 1)
  with pytest.raises(ValueError, match="num_heads"):
    convert.from_pytorch(directory)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_weights_load_as_float32(tmp_path, dtype):
  sd = reference_model().state_dict()
  half = {k: v.to(getattr(torch, dtype)) for k, v in sd.items()}
  _, params = convert.from_pytorch(write_hf(tmp_path / "fp16", half))
  _, expected = convert.from_pytorch(write_hf(tmp_path / "fp32", {k: v.float() for k, v in half.items()}))
  assert all(x.dtype == np.float32 for x in jax.tree.leaves(params))
  assert_trees_equal(params, expected)


@pytest.mark.parametrize("prefix", ["glm.", "model.", "module."])
def test_key_prefixes_are_stripped(tmp_path, prefix):
  sd = reference_model().state_dict()
  _, params = convert.from_pytorch(write_hf(tmp_path / "p", {prefix + k: v for k, v in sd.items()}))
  _, expected = convert.from_pytorch(write_hf(tmp_path / "plain", sd))
  assert_trees_equal(params, expected)


def test_unknown_keys_are_reported_and_ignored(tmp_path, caplog):
  sd = dict(reference_model().state_dict())
  extra = {"prompt_spell.lstm_head.weight_ih_l0": torch.ones(3, 3), "cls_head.weight": torch.zeros(2, E)}
  with caplog.at_level(logging.WARNING):
    imported = convert.from_pytorch(write_hf(tmp_path / "x", {**sd, **extra}))
  assert imported.unknown_keys == tuple(sorted(extra))
  assert "prompt_spell.lstm_head.weight_ih_l0" in caplog.text
  _, expected = convert.from_pytorch(write_hf(tmp_path / "plain", sd))
  assert_trees_equal(imported.params, expected)


def test_shape_mismatch_names_the_key_and_shapes(tmp_path):
  sd = dict(reference_model().state_dict())
  key = "transformer.layers.1.attention.query_key_value.weight"
  sd[key] = sd[key][:-6]
  with pytest.raises(ValueError, match=r"transformer\.layers\.1\.attention\.query_key_value\.weight") as err:
    convert.from_pytorch(write_hf(tmp_path / "bad", sd))
  assert "(90, 32)" in str(err.value) and "(96, 32)" in str(err.value)


def test_config_json_disagreeing_with_tensors_is_an_error(tmp_path):
  sd = reference_model().state_dict()
  with pytest.raises(ValueError, match=r"\(256, 32\).*\(256, 64\)"):
    convert.from_pytorch(write_hf(tmp_path / "bad", sd, hf_config(hidden_size=64, num_attention_heads=8)))


def test_relative_encoding_is_refused(tmp_path):
  sd = reference_model().state_dict()
  with pytest.raises(ValueError, match="relative_encoding"):
    convert.from_pytorch(write_hf(tmp_path / "xl", sd, hf_config(relative_encoding=True)))


def test_missing_layer_is_an_error(tmp_path):
  sd = {k: v for k, v in reference_model().state_dict().items() if not k.startswith("transformer.layers.1.")}
  with pytest.raises(KeyError, match="transformer.layers.1"):
    convert.from_pytorch(write_hf(tmp_path / "bad", sd))


@pytest.mark.parametrize("scan_layers", [True, False])
def test_export_round_trip_is_exact(tmp_path, scan_layers):
  sd = reference_model().state_dict()
  config, params = convert.from_pytorch(write_hf(tmp_path / "in", sd), scan_layers=scan_layers)
  assert ("layers" in params) == scan_layers
  out = convert.to_pytorch(config, params, tmp_path / "out")
  exported = torch.load(out / "pytorch_model.bin", weights_only=True)
  assert set(exported) == {"glm." + k for k in sd}
  for key, value in sd.items():
    assert torch.equal(exported["glm." + key], value), key
  written = json.loads((out / "config.json").read_text())
  assert {k: written[k] for k in hf_config()} == hf_config()
  config2, params2 = convert.from_pytorch(out, scan_layers=scan_layers)
  assert config2 == config
  assert_trees_equal(params2, params)


@pytest.mark.slow
def test_export_accepts_model_init_params(tmp_path):
  from flax.core import meta

  config, _ = convert.from_pytorch(write_hf(tmp_path / "in", reference_model().state_dict()))
  z = jnp.zeros((1, 4), jnp.int32)
  boxed = GLM(config).init(jax.random.key(0), z, z, z, sep=jnp.ones((1,), jnp.int32))["params"]
  out = convert.to_pytorch(config, boxed, tmp_path / "out")
  _, params = convert.from_pytorch(out)
  assert_trees_equal(params, meta.unbox(boxed))


def test_chinese_10b_gmask_row_is_copied(tmp_path):
  rows = 50048
  rng = np.random.default_rng(0)
  sd = {
    k: torch.from_numpy(rng.standard_normal(s).astype(np.float32))
    for k, s in pt.torch_shapes(
      preset("glm-10b-chinese", num_layers=1, hidden_size=16, num_heads=2, max_length=8)
    ).items()
  }
  directory = write_hf(tmp_path / "zh", sd, hf_config(num_layers=1, hidden_size=16, num_attention_heads=2))
  _, params = convert.from_pytorch(directory, fix_chinese_10b_gmask=True)
  table, original = params["word_embeddings"]["embedding"], sd["word_embeddings.weight"].numpy()
  assert table.shape[0] == rows
  np.testing.assert_array_equal(table[50009], original[50007])
  np.testing.assert_array_equal(np.delete(table, 50009, 0), np.delete(original, 50009, 0))
  _, untouched = convert.from_pytorch(directory)  # not the 10B shape: left alone by default
  np.testing.assert_array_equal(untouched["word_embeddings"]["embedding"], original)


def test_saved_args_load_safely_and_other_objects_need_allow_pickle(tmp_path):
  sd = reference_model().state_dict()
  directory = write_megatron(tmp_path / "mp", sd, 1)
  file = directory / "1000" / "mp_rank_00_model_states.pt"
  # Megatron/DeepSpeed's saved args: an argparse.Namespace, rebuilt by the safe loader (no allow_pickle).
  torch.save({"module": dict(sd), "args": argparse.Namespace(num_layers=LAYERS)}, file)
  _, params = convert.from_pytorch(directory, num_heads=H)
  assert params["word_embeddings"]["embedding"].shape == (V, E)
  # Any other object would run code to load: refused, naming its type and the flag.
  torch.save({"module": dict(sd), "where": pathlib.PurePosixPath("/x")}, file)
  with pytest.raises(ValueError, match="object of type pathlib.PurePosixPath .* pass --allow_pickle"):
    convert.from_pytorch(directory, num_heads=H)
  _, params = convert.from_pytorch(directory, num_heads=H, allow_pickle=True)
  assert params["word_embeddings"]["embedding"].shape == (V, E)


def test_missing_or_truncated_files_are_named_without_suggesting_allow_pickle(tmp_path):
  sd = reference_model().state_dict()
  directory = write_megatron(tmp_path / "mp", sd, 1)
  file = directory / "1000" / "mp_rank_00_model_states.pt"
  whole = file.read_bytes()
  file.write_bytes(whole[: len(whole) // 2])
  with pytest.raises(ValueError, match=r"mp_rank_00_model_states.pt is not a readable PyTorch checkpoint .* copy it"):
    convert.from_pytorch(directory, num_heads=H)
  try:
    convert.from_pytorch(directory, num_heads=H)
  except ValueError as e:
    assert "allow_pickle" not in str(e) and len(str(e).splitlines()) == 1
  hf = write_hf(tmp_path / "hf", sd)
  (hf / "pytorch_model.bin").rename(hf / "part-1.bin")
  (hf / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": {"a": "part-1.bin", "b": "part-2.bin"}}))
  with pytest.raises(FileNotFoundError, match="part-2.bin does not exist"):
    convert.from_pytorch(hf, num_heads=H)


def test_tracker_and_index_files_cannot_name_paths_outside_the_checkpoint(tmp_path):
  sd = reference_model().state_dict()
  outside = write_megatron(tmp_path / "elsewhere", sd, 1)
  directory = tmp_path / "mp"
  directory.mkdir()
  (directory / "latest_checkpointed_iteration.txt").write_text(f"../{outside.name}/1000")
  with pytest.raises(ValueError, match=r"names '\.\./elsewhere/1000', outside .*; refused"):
    convert.from_pytorch(directory, num_heads=H)
  hf = tmp_path / "hf"
  hf.mkdir()
  (hf / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": {"a": str(outside / "1000" / "x.pt")}}))
  with pytest.raises(ValueError, match="outside .*; refused"):
    convert.from_pytorch(hf, num_heads=H)


def test_import_glm_jax_does_not_import_torch():
  code = (
    "import sys, glm_jax, glm_jax.model, glm_jax.convert, glm_jax.convert.pytorch; "
    "assert 'torch' not in sys.modules and 'tokenizers' not in sys.modules"
  )
  subprocess.run([sys.executable, "-c", code], check=True)


def test_hf_sharded_index(tmp_path):
  sd = reference_model().state_dict()
  directory = write_hf(tmp_path / "sharded", {})
  (directory / "pytorch_model.bin").unlink()
  keys = sorted(sd)
  halves = {"pytorch_model-00001-of-00002.bin": keys[::2], "pytorch_model-00002-of-00002.bin": keys[1::2]}
  for file, names in halves.items():
    torch.save({"glm." + k: sd[k] for k in names}, directory / file)
  weight_map = {"glm." + k: file for file, names in halves.items() for k in names}
  (directory / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": weight_map}))
  _, params = convert.from_pytorch(directory)
  _, expected = convert.from_pytorch(write_hf(tmp_path / "single", sd))
  assert_trees_equal(params, expected)


FIXTURE = pathlib.Path(__file__).resolve().parents[2] / ".." / "shared" / "fixtures" / "thudm_glm_tiny"


@pytest.mark.skipif(not FIXTURE.exists(), reason=f"the reference fixture is not at {FIXTURE}")
def test_logits_match_the_logits_the_reference_code_produced(tmp_path):
  """shared/fixtures/thudm_glm_tiny was written by THUDM/GLM's own model code: its weights converted by the
  `convert` command and restored from the glm-jax checkpoint give the reference's logits."""
  from glm_jax import main
  from glm_jax.train import checkpoints

  main.run(["convert", f"--from_pytorch={FIXTURE}", f"--output_dir={tmp_path / 'out'}"])
  config, params = checkpoints.load_params(str(tmp_path / "out"))
  inputs, want = np.load(FIXTURE / "inputs.npz"), np.load(FIXTURE / "logits.npy")
  positions = inputs["position_ids"]  # [B, 2, L]: position ids, block position ids
  for implementation in ("reference", None):  # the materialized mask, and the platform's default kernel
    model = GLM(config.replace(attention_implementation=implementation))
    got = model.apply({"params": params}, inputs["input_ids"], positions[:, 0], positions[:, 1], sep=inputs["sep"])
    np.testing.assert_allclose(np.asarray(got)[..., : want.shape[-1]], want, atol=2e-5, rtol=1e-4)


def test_converted_config_records_whether_the_model_has_task_masks():
  from glm_jax.convert import pytorch
  from glm_jax.model import PRESETS

  def state_dict(layers, hidden, rows, max_length=512):
    tensors = {
      "word_embeddings.weight": np.zeros((rows, hidden), np.float32),
      "transformer.position_embeddings.weight": np.zeros((max_length + 1, hidden), np.float32),
    }
    tensors.update({f"transformer.layers.{i}.input_layernorm.weight": np.zeros(hidden) for i in range(layers)})
    return tensors

  assert not pytorch.infer_config(state_dict(24, 1024, 30592)).task_mask  # glm-large
  assert pytorch.infer_config(state_dict(24, 1024, 50048, 1024)).task_mask  # glm-large-chinese
  assert pytorch.infer_config(state_dict(3, 64, 256), num_heads=4).task_mask  # not published: as trained here
  assert PRESETS["glm-2b"].task_mask
