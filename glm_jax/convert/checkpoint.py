"""The convert command: a THUDM PyTorch checkpoint -> a glm-jax checkpoint that train, infer and fine-tuning load.

Written through glm_jax.train.checkpoints, the owner of the layout: a params-only checkpoint at step 0, its model
config, and (given `vocab_files`) the tokenizer in OUTPUT_DIR/tokenizer/; plus OUTPUT_DIR/model.gin, the gin
bindings that fine-tune it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

from etils import epath

from glm_jax.convert import pytorch
from glm_jax.data import tokenizers
from glm_jax.model import PUBLISHED, GLMConfig, match_published
from glm_jax.train import checkpoints

log = logging.getLogger(__name__)

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
  config. The work of `python -m glm_jax.main convert`.

  `vocab_files` (e.g. vocab.txt, or vocab.json + merges.txt, or cog-pretrain.model) are checked against the model
  and kept with the checkpoint (without them `infer`, `score` and fine-tuning refuse the checkpoint until its
  tokenizer is added); `tokenizer` names their family ("bert", "gpt2", "roberta", "chinese_sp"), by default the
  one of the published model of this shape.
  """
  imported = pytorch.from_pytorch(from_pytorch, num_heads=num_heads, allow_pickle=allow_pickle, scan_layers=scan_layers)
  config, params = imported
  vocabulary = None
  if vocab_files:  # checked before anything is written
    if tokenizer is None:
      name = match_published(config.num_layers, config.hidden_size, config.vocab_size)
      if name is None:
        raise ValueError(
          "no published GLM has this checkpoint's shape, so its tokenizer family is unknown; pass "
          "tokenizer= (--tokenizer) as one of bert, gpt2, roberta, chinese_sp"
        )
      tokenizer = PUBLISHED[name]
    vocabulary = tokenizers.from_files(tokenizer, *vocab_files, embedding_rows=config.padded_vocab_size)
  checkpoints.save_params(output_dir, config, _to_host_jax_arrays(params))
  if vocabulary is not None:
    checkpoints.save_vocabulary(output_dir, vocabulary)
  else:
    log.warning(
      "%s has no tokenizer (no --vocab_files): infer, score, eval and fine-tuning refuse it until one is added "
      "(python -m glm_jax.main vocab --checkpoint %s --family FAMILY --files FILES...)",
      output_dir,
      output_dir,
    )
  write_model_gin(output_dir, with_tokenizer=vocabulary is not None)
  log.info(
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
