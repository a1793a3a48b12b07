"""The convert command: a THUDM PyTorch checkpoint -> an orbax checkpoint that train, infer and fine-tune load.

Layout (the same item names as glm_jax/train/checkpoints.py, step 0):
    OUTPUT_DIR/0/state         orbax StandardSave of {"params": params}   (no optimizer state, no step)
    OUTPUT_DIR/0/model_config  GLMConfig as JSON
    OUTPUT_DIR/tokenizer/      the vocabulary files and their manifest, when given (convert.tokenizers)
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Sequence

import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from glm_jax.convert import presets, pytorch
from glm_jax.model.config import GLMConfig
from glm_jax.train import checkpoints

STEP = 0


def save_converted(output_dir: str, config: GLMConfig, params: dict) -> str:
  """Writes `params` and `config` as an orbax checkpoint at step 0 of `output_dir`; returns the directory."""
  output_dir = checkpoints.absolute(output_dir)
  options = ocp.CheckpointManagerOptions(create=True)
  with ocp.CheckpointManager(output_dir, options=options) as manager:
    if manager.latest_step() is not None:
      raise FileExistsError(
        f"{output_dir} already holds a checkpoint (step {manager.latest_step()}); choose an empty --output_dir"
      )
    manager.save(
      STEP,
      args=ocp.args.Composite(
        state=ocp.args.StandardSave({"params": params}), model_config=ocp.args.JsonSave(dataclasses.asdict(config))
      ),
    )
    manager.wait_until_finished()
  return output_dir


MODEL_GIN = "model.gin"


def write_model_gin(output_dir: str, with_tokenizer: bool = False) -> str:
  """Writes `output_dir`/model.gin, which builds the experiment's model from this checkpoint's config and starts
  training from its params, so that `train --gin_file=<experiment>.gin --gin_file=<output_dir>/model.gin
  --model_dir=RUN` fine-tunes it (given last, its bindings win over a model the experiment names; bind
  TrainConfig.init_checkpoint = None after it to train this architecture from scratch). `with_tokenizer`: the
  checkpoint keeps its tokenizer, and the glm_* Tasks (tasks/pretrain.py) are bound to use it."""
  output_dir = checkpoints.absolute(output_dir)
  path = os.path.join(output_dir, MODEL_GIN)
  lines = [
    "# The model of the checkpoint in this directory (written by glm_jax.convert): its config, and its",
    "# params as the starting point of a run whose model_dir holds no checkpoint yet.",
    "experiment.model = @model_from_checkpoint()",
    f"model_from_checkpoint.directory = {output_dir!r}",
    f"TrainConfig.init_checkpoint = {output_dir!r}",
  ]
  if with_tokenizer:
    lines += [
      "# The glm_* Tasks tokenize with this checkpoint's own tokenizer (saved in tokenizer/).",
      "import tasks",
      f"task_vocabulary.checkpoint = {output_dir!r}",
    ]
  epath.Path(path).write_text("\n".join(lines) + "\n")
  return path


def load_converted(output_dir: str) -> tuple[GLMConfig, dict]:
  """Reads back what `convert_checkpoint` wrote -> (config, params as host numpy arrays)."""
  output_dir = checkpoints.absolute(output_dir)
  with ocp.CheckpointManager(output_dir) as manager:
    step = manager.latest_step()
    if step is None:
      raise FileNotFoundError(
        f"no checkpoint under {output_dir!r} (run `python -m glm_jax.convert "
        f"--from_pytorch PATH --output_dir {output_dir}` first)"
      )
    import jax

    cpu = jax.sharding.SingleDeviceSharding(jax.local_devices(backend="cpu")[0])
    target = jax.tree.map(
      lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=cpu), manager.item_metadata(step)["state"]
    )
    restored = manager.restore(
      step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target), model_config=ocp.args.JsonRestore())
    )
  return GLMConfig(**restored.model_config), jax.tree.map(np.asarray, restored.state["params"])


def _to_host_jax_arrays(tree: dict) -> dict:
  """numpy leaves -> jax arrays on the CPU, in place and one at a time: orbax then writes them without a
  second host copy of the whole model, and an accelerator's memory is never used."""
  import jax

  cpu = jax.local_devices(backend="cpu")[0]
  for key, value in tree.items():
    tree[key] = _to_host_jax_arrays(value) if isinstance(value, dict) else jax.device_put(value, cpu)
  return tree


def convert_checkpoint(
  from_pytorch: str,
  output_dir: str,
  *,
  num_heads: int | None = None,
  allow_pickle: bool = False,
  scan_layers: bool = True,
  vocab_files: Sequence[str] = (),
  tokenizer: str | None = None,
) -> GLMConfig:
  """Imports a THUDM GLM checkpoint (HF or Megatron/DeepSpeed) and writes it to `output_dir`; returns the
  config. The entry point behind `python -m glm_jax.main convert` and `python -m glm_jax.convert`.

  `vocab_files` (e.g. vocab.txt, or vocab.json + merges.txt, or cog-pretrain.model) are checked and copied to
  `output_dir`/tokenizer/ for glm_jax.convert.tokenizers.load_with_checkpoint; `tokenizer` names their family
  ("bert", "gpt2", "roberta", "chinese_sp"), by default the one of the published model of this shape.
  """
  imported = pytorch.from_pytorch(from_pytorch, num_heads=num_heads, allow_pickle=allow_pickle, scan_layers=scan_layers)
  config, params = imported
  if vocab_files and tokenizer is None:
    name = presets.match_published(config.num_layers, config.hidden_size, config.vocab_size)
    if name is None:
      raise ValueError(
        "no published GLM has this checkpoint's shape, so its tokenizer family is unknown; pass "
        "tokenizer= (--tokenizer) as one of bert, gpt2, roberta, chinese_sp"
      )
    tokenizer = presets.PUBLISHED[name].tokenizer
  if vocab_files:  # checked before anything is written
    from glm_jax.convert import tokenizers  # imports TensorFlow and seqio: only when a vocabulary is given

    tokenizers.from_files(tokenizer, *vocab_files, embedding_rows=config.padded_vocab_size)
  save_converted(output_dir, config, _to_host_jax_arrays(params))
  if vocab_files:
    tokenizers.save_with_checkpoint(output_dir, tokenizer, *vocab_files, embedding_rows=config.padded_vocab_size)
  write_model_gin(output_dir, with_tokenizer=bool(vocab_files))
  logging.info(
    "converted %s -> %s (%d layers, hidden %d, %d heads, %d vocabulary rows, max length %d; %d unused tensors ignored)",
    from_pytorch,
    output_dir,
    config.num_layers,
    config.hidden_size,
    config.num_heads,
    config.vocab_size,
    config.max_length,
    len(imported.unknown_keys),
  )
  return config
