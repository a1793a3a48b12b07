"""THUDM GLM PyTorch state dicts <-> glm-jax Flax params, for both published formats.

HF format: a folder with `config.json` and `pytorch_model.bin`. Megatron/DeepSpeed format: `<dir>/latest_
checkpointed_iteration.txt` (or `latest`) naming `<dir>/<iteration|release>/mp_rank_XX_model_states.pt`, the
state dict under "module", one file per model-parallel rank.

Reference layout (PyTorch Linear weights are [out, in]; keys optionally prefixed `glm.`, `model.` or `module.`):
    word_embeddings.weight                              [V, E]
    transformer.{position,block_position}_embeddings.weight  [max_length + 1, E]
    transformer.layers.{i}.input_layernorm.{weight,bias}       [E]
    transformer.layers.{i}.attention.query_key_value.weight    [3E, E]  rows: Q, K, V; head n at n*D..(n+1)*D
    transformer.layers.{i}.attention.query_key_value.bias      [3E]
    transformer.layers.{i}.attention.dense.{weight [E, E], bias [E]}
    transformer.layers.{i}.post_attention_layernorm.{weight,bias}
    transformer.layers.{i}.mlp.dense_h_to_4h.{weight [4E, E], bias [4E]}
    transformer.layers.{i}.mlp.dense_4h_to_h.{weight [E, 4E], bias [E]}
    transformer.final_layernorm.{weight,bias}

torch is imported lazily, only by the functions that read or write .bin/.pt files.
"""

from __future__ import annotations

import argparse
import json
import logging
import pathlib
import pickle
import re
from collections.abc import Mapping

import jax
import numpy as np

from glm_jax.model.config import PRESETS, GLMConfig, match_published

log = logging.getLogger(__name__)

_PREFIXES = ("glm.", "model.", "module.")
_LAYER_KEY = re.compile(r"^transformer\.layers\.(\d+)\.")
_TRACKER_FILES = ("latest_checkpointed_iteration.txt", "latest")
# glm-10b-chinese was trained with [gMASK] at 50007 (the id of [eop]); its tokenizer and the reference HF export
# put [gMASK] at 50009 and copy the row there.
_CHINESE_10B_GMASK_TRAINED, _CHINESE_10B_GMASK = 50007, 50009


class ImportedCheckpoint(tuple):
  """`(config, params)` as a plain 2-tuple, with `.unknown_keys`: the checkpoint keys that were ignored."""

  def __new__(cls, config: GLMConfig, params: dict, unknown_keys=()):
    obj = super().__new__(cls, (config, params))
    obj.unknown_keys = tuple(unknown_keys)
    return obj

  @property
  def config(self) -> GLMConfig:
    return self[0]

  @property
  def params(self) -> dict:
    return self[1]


def torch_shapes(config: GLMConfig) -> dict[str, tuple[int, ...]]:
  """The reference state dict (unprefixed keys) this config corresponds to: key -> shape."""
  v, e, f, p = config.padded_vocab_size, config.hidden_size, config.mlp_dim, config.max_length + 1
  shapes = {
    "word_embeddings.weight": (v, e),
    "transformer.position_embeddings.weight": (p, e),
    "transformer.block_position_embeddings.weight": (p, e),
    "transformer.final_layernorm.weight": (e,),
    "transformer.final_layernorm.bias": (e,),
  }
  for i in range(config.num_layers):
    pre = f"transformer.layers.{i}."
    shapes.update(
      {
        pre + "input_layernorm.weight": (e,),
        pre + "input_layernorm.bias": (e,),
        pre + "attention.query_key_value.weight": (3 * e, e),
        pre + "attention.query_key_value.bias": (3 * e,),
        pre + "attention.dense.weight": (e, e),
        pre + "attention.dense.bias": (e,),
        pre + "post_attention_layernorm.weight": (e,),
        pre + "post_attention_layernorm.bias": (e,),
        pre + "mlp.dense_h_to_4h.weight": (f, e),
        pre + "mlp.dense_h_to_4h.bias": (f,),
        pre + "mlp.dense_4h_to_h.weight": (e, f),
        pre + "mlp.dense_4h_to_h.bias": (e,),
      }
    )
  return shapes


def strip_prefixes(state_dict: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Drops one leading `glm.` / `model.` / `module.` from every key."""
  out = {}
  for key, value in state_dict.items():
    for prefix in _PREFIXES:
      if key.startswith(prefix):
        key = key[len(prefix) :]
        break
    out[key] = value
  return out


def infer_config(
  state_dict: Mapping[str, np.ndarray], *, num_heads: int | None = None, hf_config: Mapping | None = None, **overrides
) -> GLMConfig:
  """A GLMConfig for an unprefixed reference state dict.

  Layers, heads and hidden size come from `hf_config` (config.json) when given; otherwise layers, hidden size
  and MLP width from the tensor shapes, and heads from `num_heads` or the published checkpoint of that shape.
  Vocabulary rows and max length always come from the tensors (the tables have max_length + 1 rows).
  """
  for key in ("word_embeddings.weight", "transformer.position_embeddings.weight"):
    if key not in state_dict:
      raise KeyError(
        f"{key!r} not in the checkpoint (keys start with {sorted(state_dict)[:5]}); "
        f"this does not look like a THUDM GLM v1 state dict"
      )
  vocab_rows, hidden = state_dict["word_embeddings.weight"].shape
  max_length = state_dict["transformer.position_embeddings.weight"].shape[0] - 1
  layer_ids = {int(m.group(1)) for m in map(_LAYER_KEY.match, state_dict) if m}
  num_layers = max(layer_ids) + 1 if layer_ids else 0
  mlp_key = "transformer.layers.0.mlp.dense_h_to_4h.weight"
  mlp_dim = state_dict[mlp_key].shape[0] if mlp_key in state_dict else 4 * hidden
  if hf_config is not None:
    if hf_config.get("relative_encoding"):
      raise ValueError(
        "config.json has relative_encoding=true (Transformer-XL positions); glm-jax implements the "
        "learned 2D positions of the published GLM models only"
      )
    num_layers, hidden = int(hf_config["num_layers"]), int(hf_config["hidden_size"])
    num_heads = int(hf_config["num_attention_heads"]) if num_heads is None else num_heads
  name = match_published(num_layers, hidden, vocab_rows)
  if num_heads is None:
    if name is None:
      raise ValueError(
        f"cannot tell the number of attention heads of a checkpoint with {num_layers} layers, hidden size "
        f"{hidden} and {vocab_rows} vocabulary rows (no config.json, no published model of that shape); "
        f"pass num_heads (--num_heads)"
      )
    num_heads = PRESETS[name].num_heads
  if mlp_dim % hidden:
    raise ValueError(f"{mlp_key} has {mlp_dim} rows, not a multiple of hidden size {hidden}")
  return GLMConfig(
    vocab_size=vocab_rows,
    num_layers=num_layers,
    hidden_size=hidden,
    num_heads=num_heads,
    max_length=max_length,
    mlp_ratio=mlp_dim // hidden,
    vocab_multiple=128 if vocab_rows % 128 == 0 else 1,
    # How `infer` continues a text without a blank: the published model's training recipe; others as trained here.
    task_mask=PRESETS[name].task_mask if name else True,
  ).replace(**overrides)


def params_from_state_dict(
  state_dict: Mapping[str, np.ndarray],
  config: GLMConfig,
  *,
  consume: bool = False,
) -> tuple[dict, list[str]]:
  """Unprefixed reference state dict -> (Flax params in float32, ignored keys).

  `consume=True` empties `state_dict` (a dict) as it goes, so its arrays are freed while converting.
  Every expected tensor is checked against `config`; a wrong shape raises naming the key and both shapes. A
  missing `block_position_embeddings` (a model trained without 2D positions) becomes a zero table.
  """
  expected = torch_shapes(config)
  state_dict = state_dict if consume else dict(state_dict)
  block_key = "transformer.block_position_embeddings.weight"
  if block_key not in state_dict:
    log.warning("%s is absent (block_position_encoding off): using zeros", block_key)
    state_dict[block_key] = np.zeros(expected[block_key], np.float32)
  missing = sorted(set(expected) - set(state_dict))
  if missing:
    raise KeyError(
      f"the checkpoint lacks {len(missing)} tensors of a {config.num_layers}-layer GLM, e.g. "
      f"{missing[:4]} (wrong num_layers, or a truncated checkpoint)"
    )
  for key, shape in expected.items():
    got = tuple(state_dict[key].shape)
    if got != shape:
      raise ValueError(
        f"{key} has shape {got} in the checkpoint but {shape} is expected for hidden_size="
        f"{config.hidden_size}, num_heads={config.num_heads}, mlp_dim={config.mlp_dim}, "
        f"vocab rows={config.padded_vocab_size}, max_length={config.max_length} "
        f"(fix config.json or the config passed in)"
      )
  unknown = sorted(set(state_dict) - set(expected))
  if unknown:
    log.warning("ignoring %d checkpoint tensors that GLM does not use: %s", len(unknown), unknown)

  # Each tensor is popped as it is converted, so that host memory holds about one copy of the model.
  t = lambda key: np.asarray(state_dict.pop(key), np.float32)  # noqa: E731
  h, d, e = config.num_heads, config.head_dim, config.hidden_size
  ln = lambda pre: {"norm": {"scale": t(pre + ".weight"), "bias": t(pre + ".bias")}}  # noqa: E731

  def layer(i: int) -> dict:
    pre = f"transformer.layers.{i}."
    return _contiguous(
      {
        "input_layernorm": ln(pre + "input_layernorm"),
        "attention": {
          "query_key_value": {
            # [3E, E] = [(3, H, D), E] -> [E, 3, H, D]
            "kernel": t(pre + "attention.query_key_value.weight").reshape(3, h, d, e).transpose(3, 0, 1, 2),
            "bias": t(pre + "attention.query_key_value.bias").reshape(3, h, d),
          },
          "dense": {  # [E_out, (H, D)] -> [H, D, E_out]
            "kernel": t(pre + "attention.dense.weight").T.reshape(h, d, e),
            "bias": t(pre + "attention.dense.bias"),
          },
        },
        "post_attention_layernorm": ln(pre + "post_attention_layernorm"),
        "mlp": {
          "dense_h_to_4h": {"kernel": t(pre + "mlp.dense_h_to_4h.weight").T, "bias": t(pre + "mlp.dense_h_to_4h.bias")},
          "dense_4h_to_h": {"kernel": t(pre + "mlp.dense_4h_to_h.weight").T, "bias": t(pre + "mlp.dense_4h_to_h.bias")},
        },
      }
    )

  params = _contiguous(
    {
      "word_embeddings": {"embedding": t("word_embeddings.weight")},
      "position_embeddings": {"embedding": t("transformer.position_embeddings.weight")},
      "block_position_embeddings": {"embedding": t(block_key)},
      "final_layernorm": ln("transformer.final_layernorm"),
    }
  )
  if config.scan_layers:  # written layer by layer into the stacked arrays, never holding both layouts
    first = layer(0)
    stacked = jax.tree.map(lambda x: np.empty((config.num_layers, *x.shape), x.dtype), first)
    for i in range(config.num_layers):
      jax.tree.map(lambda out, x, i=i: out.__setitem__(i, x), stacked, first if i == 0 else layer(i))
    params["layers"] = stacked
  else:
    params.update({f"layers_{i}": layer(i) for i in range(config.num_layers)})
  return params, unknown


def state_dict_from_params(config: GLMConfig, params: Mapping) -> dict[str, np.ndarray]:
  """Flax params (scanned or per-layer, boxed or not) -> unprefixed reference state dict (numpy)."""
  from flax.core import meta  # flax is a core dependency; imported here to keep module import light

  params = meta.unbox(dict(params))
  if "params" in params and "word_embeddings" not in params:
    params = params["params"]
  if "layers" in params:
    params = unstack_layers_np(params, config.num_layers)
  a = lambda x: np.array(x)  # noqa: E731  (a host copy, writable, whatever the device)
  e = config.hidden_size
  sd = {
    "word_embeddings.weight": a(params["word_embeddings"]["embedding"]),
    "transformer.position_embeddings.weight": a(params["position_embeddings"]["embedding"]),
    "transformer.block_position_embeddings.weight": a(params["block_position_embeddings"]["embedding"]),
    "transformer.final_layernorm.weight": a(params["final_layernorm"]["norm"]["scale"]),
    "transformer.final_layernorm.bias": a(params["final_layernorm"]["norm"]["bias"]),
  }
  for i in range(config.num_layers):
    layer, pre = params[f"layers_{i}"], f"transformer.layers.{i}."
    attn, mlp = layer["attention"], layer["mlp"]
    sd.update(
      {
        pre + "input_layernorm.weight": a(layer["input_layernorm"]["norm"]["scale"]),
        pre + "input_layernorm.bias": a(layer["input_layernorm"]["norm"]["bias"]),
        pre + "attention.query_key_value.weight": a(attn["query_key_value"]["kernel"])
        .transpose(1, 2, 3, 0)
        .reshape(3 * e, e),
        pre + "attention.query_key_value.bias": a(attn["query_key_value"]["bias"]).reshape(3 * e),
        pre + "attention.dense.weight": a(attn["dense"]["kernel"]).reshape(e, e).T,
        pre + "attention.dense.bias": a(attn["dense"]["bias"]),
        pre + "post_attention_layernorm.weight": a(layer["post_attention_layernorm"]["norm"]["scale"]),
        pre + "post_attention_layernorm.bias": a(layer["post_attention_layernorm"]["norm"]["bias"]),
        pre + "mlp.dense_h_to_4h.weight": a(mlp["dense_h_to_4h"]["kernel"]).T,
        pre + "mlp.dense_h_to_4h.bias": a(mlp["dense_h_to_4h"]["bias"]),
        pre + "mlp.dense_4h_to_h.weight": a(mlp["dense_4h_to_h"]["kernel"]).T,
        pre + "mlp.dense_4h_to_h.bias": a(mlp["dense_4h_to_h"]["bias"]),
      }
    )
  return {k: np.ascontiguousarray(v) for k, v in sd.items()}


def merge_model_parallel(shards: list[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
  """Megatron model-parallel rank state dicts (unprefixed, in rank order) -> one full state dict.

  Column-parallel tensors (word_embeddings, dense_h_to_4h weight and bias) are split along dim 0; the fused
  QKV weight and bias hold each rank's own heads as [Q_r; K_r; V_r]; row-parallel weights (attention.dense,
  dense_4h_to_h) are split along dim 1; everything else is replicated and taken from rank 0.
  """
  if len(shards) == 1:
    return dict(shards[0])
  merged = {}
  for key, first in shards[0].items():
    parts = [np.asarray(s[key]) for s in shards]
    if key == "word_embeddings.weight" or key.endswith(("mlp.dense_h_to_4h.weight", "mlp.dense_h_to_4h.bias")):
      merged[key] = np.concatenate(parts, axis=0)
    elif key.endswith(("attention.query_key_value.weight", "attention.query_key_value.bias")):
      per_rank = [p.reshape(3, p.shape[0] // 3, *p.shape[1:]) for p in parts]  # [3, E/r, (E)]
      full = np.concatenate(per_rank, axis=1)
      merged[key] = full.reshape(-1, *full.shape[2:])
    elif key.endswith(("attention.dense.weight", "mlp.dense_4h_to_h.weight")):
      merged[key] = np.concatenate(parts, axis=1)
    else:
      shapes = {p.shape for p in parts}
      if len(shapes) != 1:
        raise ValueError(
          f"{key} should be replicated across model-parallel ranks but has shapes {[p.shape for p in parts]}"
        )
      merged[key] = parts[0]
  return merged


def import_torch():
  """torch, or an error saying how to install it (it is the optional `[convert]` extra)."""
  try:
    import torch
  except ImportError as err:
    raise ImportError('reading and writing PyTorch checkpoints needs torch: pip install "glm-jax[convert]"') from err
  return torch


# What Megatron/DeepSpeed checkpoints carry besides tensors (their saved `args`): safe to rebuild, no code runs.
_SAFE_GLOBALS = (argparse.Namespace,)


def _torch_load(file: pathlib.Path, allow_pickle: bool):
  """torch.load with weights_only=True (tensors, containers and _SAFE_GLOBALS; nothing runs) unless allow_pickle.
  Raises FileNotFoundError for a missing file, ValueError (one line) for a file that is not a readable torch
  checkpoint (truncated, corrupt) or that holds other Python objects (then naming --allow_pickle)."""
  torch = import_torch()
  if not file.is_file():
    raise FileNotFoundError(f"{file} does not exist (a shard or rank file of the checkpoint is missing)")
  if allow_pickle:
    return torch.load(file, map_location="cpu", weights_only=False)
  try:
    with torch.serialization.safe_globals(list(_SAFE_GLOBALS)):
      return torch.load(file, map_location="cpu", weights_only=True)
  except pickle.UnpicklingError as err:
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(err))
    if found:
      raise ValueError(
        f"{file} holds a Python object of type {found.group(1)} besides tensors, which loading it would run as "
        f"code; if you trust the file, pass --allow_pickle (allow_pickle=True)"
      ) from None
    raise ValueError(f"{file} is not a readable PyTorch checkpoint ({_first_line(err)}): copy it again") from None
  except (RuntimeError, EOFError, OSError) as err:  # a truncated zip archive, a torn legacy file
    raise ValueError(f"{file} is not a readable PyTorch checkpoint ({_first_line(err)}): copy it again") from None


def _first_line(err: Exception) -> str:
  lines = str(err).strip().splitlines()
  return f"{type(err).__name__}: {lines[0][:200] if lines else ''}"


def _inside(root: pathlib.Path, named: str, source: pathlib.Path) -> pathlib.Path:
  """root / named, refused (ValueError) when it resolves outside root: a tracker or index file names a path."""
  target = (root / named).resolve()
  if not target.is_relative_to(root.resolve()):
    raise ValueError(f"{source} names {named!r}, outside {root}; refused (a checkpoint reads only its own folder)")
  return target


def _to_numpy(state_dict) -> dict[str, np.ndarray]:
  out = {}
  for key, value in state_dict.items():
    if hasattr(value, "detach"):  # a torch.Tensor; numpy has no bfloat16, so that one is widened here
      value = value.detach()
      out[key] = value.float().numpy() if str(value.dtype) == "torch.bfloat16" else value.numpy()
    elif isinstance(value, np.ndarray):
      out[key] = value
  return out


def _megatron_rank_files(directory: pathlib.Path) -> list[pathlib.Path]:
  tag_dir = directory
  for tracker in _TRACKER_FILES:
    if (directory / tracker).is_file():
      tag_dir = _inside(directory, (directory / tracker).read_text().strip(), directory / tracker)
      break
  files = sorted(tag_dir.glob("mp_rank_*_model_states.pt")) or sorted(tag_dir.glob("mp_rank_*/model_optim_rng.pt"))
  return files


def read_state_dict(
  path: str | pathlib.Path,
  *,
  allow_pickle: bool = False,
) -> tuple[dict[str, np.ndarray], dict | None]:
  """Reads a checkpoint in either format -> (unprefixed, merged state dict of numpy arrays in the stored dtype
  (bfloat16 widened to float32), config.json or None).

  `path`: an HF folder (pytorch_model.bin, or shards listed in pytorch_model.bin.index.json), a Megatron/
  DeepSpeed checkpoint folder, an iteration folder holding mp_rank_* files, or one .bin / .pt file.
  """
  path = pathlib.Path(path)
  hf_config, merge = None, merge_model_parallel
  index = path / "pytorch_model.bin.index.json"
  if path.is_dir() and (path / "pytorch_model.bin").is_file():
    files = [path / "pytorch_model.bin"]
  elif path.is_dir() and index.is_file():  # HF sharded: each file holds whole tensors, merged by key
    files = [_inside(path, f, index) for f in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
    merge = lambda shards: {k: v for shard in shards for k, v in shard.items()}  # noqa: E731
  elif path.is_dir():
    files = _megatron_rank_files(path)
    if not files:
      raise FileNotFoundError(
        f"{path} holds neither pytorch_model.bin (HF format) nor latest_checkpointed_iteration.txt / latest "
        f"with <iteration>/mp_rank_XX_model_states.pt (Megatron/DeepSpeed format)"
      )
  elif path.is_file():
    files = [path]
  else:
    raise FileNotFoundError(f"checkpoint path {path} does not exist")
  if (files[0].parent / "config.json").is_file():
    hf_config = json.loads((files[0].parent / "config.json").read_text())
  shards = []
  for file in files:
    loaded = _torch_load(file, allow_pickle)
    if isinstance(loaded, Mapping) and "module" in loaded and isinstance(loaded["module"], Mapping):
      loaded = loaded["module"]
    shards.append(strip_prefixes(_to_numpy(loaded)))
  return merge(shards), hf_config


def from_pytorch(
  path: str | pathlib.Path,
  *,
  num_heads: int | None = None,
  allow_pickle: bool = False,
  fix_chinese_10b_gmask: bool | None = None,
  **config_overrides,
) -> ImportedCheckpoint:
  """Loads a THUDM GLM checkpoint (HF or Megatron/DeepSpeed, any model-parallel size) -> `(config, params)`.

  params are float32 numpy arrays in the layout of `GLM(config)` (scanned `layers` unless
  `scan_layers=False` is passed); `result.unknown_keys` lists the ignored tensors (also logged).
  `fix_chinese_10b_gmask` (default: on for the glm-10b-chinese shape) copies word-embedding row 50007 to 50009,
  where the tokenizer puts [gMASK], as the reference's HF export does.
  """
  state_dict, hf_config = read_state_dict(path, allow_pickle=allow_pickle)
  config = infer_config(state_dict, num_heads=num_heads, hf_config=hf_config, **config_overrides)
  params, unknown = params_from_state_dict(state_dict, config, consume=True)
  if fix_chinese_10b_gmask is None:
    chinese_10b = PRESETS["glm-10b-chinese"]
    fix_chinese_10b_gmask = (config.num_layers, config.hidden_size, config.vocab_size) == (
      chinese_10b.num_layers,
      chinese_10b.hidden_size,
      chinese_10b.vocab_size,
    )
  if fix_chinese_10b_gmask:
    table = params["word_embeddings"]["embedding"]
    table[_CHINESE_10B_GMASK] = table[_CHINESE_10B_GMASK_TRAINED]
  return ImportedCheckpoint(config, params, unknown)


def hf_config_dict(config: GLMConfig) -> dict:
  """The config.json of the reference HF GLM model for `config`."""
  return {
    "architectures": ["GLMModel"],
    "model_type": "glm",
    "num_layers": config.num_layers,
    "hidden_size": config.hidden_size,
    "num_attention_heads": config.num_heads,
    "vocab_size": config.padded_vocab_size,
    "max_sequence_length": config.max_length,
    "block_position_encoding": True,
    "embedding_dropout_prob": config.embedding_dropout,
    "attention_dropout_prob": config.attention_dropout,
    "output_dropout_prob": config.hidden_dropout,
    "initializer_range": config.init_std,
    "checkpoint_activations": False,
    "checkpoint_num_layers": 1,
    "parallel_output": True,
    "relative_encoding": False,
    "output_predict": True,
    "attention_scale": 1.0,
    "torch_dtype": "float32",
  }


def to_pytorch(
  config: GLMConfig, params: Mapping, path: str | pathlib.Path, *, prefix: str = "glm.", dtype: str = "float32"
) -> pathlib.Path:
  """Writes the HF format: `path/config.json` and `path/pytorch_model.bin` (keys prefixed `prefix`, as in
  THUDM's GLMForConditionalGeneration). Returns `path`. float32 export of float32 params is exact."""
  torch = import_torch()

  path = pathlib.Path(path)
  path.mkdir(parents=True, exist_ok=True)
  torch_dtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[dtype]
  state_dict = {
    prefix + k: torch.from_numpy(np.asarray(v, np.float32)).to(torch_dtype)
    for k, v in state_dict_from_params(config, params).items()
  }
  torch.save(state_dict, path / "pytorch_model.bin")
  (path / "config.json").write_text(json.dumps({**hf_config_dict(config), "torch_dtype": dtype}, indent=2))
  return path


def unstack_layers_np(params: Mapping, num_layers: int) -> dict:
  """The scanned layout (`layers`) -> per-layer params (`layers_0`, ...), as host numpy arrays."""
  params = dict(params)
  stacked = params.pop("layers")
  for i in range(num_layers):
    params[f"layers_{i}"] = jax.tree.map(lambda x, i=i: np.asarray(x[i]), stacked)
  return params


def _contiguous(tree):
  return jax.tree.map(np.ascontiguousarray, tree)
