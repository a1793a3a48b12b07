"""`eval --generate` and `eval --lm` on 2 processes (localhost, 2 CPU devices each, gloo) give what one process gives:
the same ROUGE and predictions file (written once, by process 0) and the same LAMBADA accuracy, the checkpoint's
params restored onto a mesh that spans both processes. Run as a script, this file is the eval command of those
processes: it registers the toy seq2seq Task and hands its command lines to glm_jax.main."""

from __future__ import annotations

import json
import os
import pathlib
import sys

import numpy as np
import pytest

TASK = "multihost_toy"
TIMEOUT_S = 300
SOURCES = [
  "the parser reads the file and returns a list of values",
  "each class defines methods that write the stream",
  "a list of values is returned when the object is called",
  "the module provides functions for working with paths",
  "read write or close the stream",
]
PASSAGES = ["the parser reads the file and returns the values", "each class writes a stream to the disk"]
GIN = """
import tasks
experiment.mesh_config = @MeshConfig()
MeshConfig.data = 2
MeshConfig.fsdp = -1
MeshConfig.tensor = 1
experiment.data = @DataConfig()
DataConfig.eval_split = 'validation'
DataConfig.pack = False
experiment.train_config = @TrainConfig()
TrainConfig.batch_size = 4
TrainConfig.length = 64
TrainConfig.eval_steps = 0
experiment.optimizer_config = @OptimizerConfig()
language_model_config.seq_length = 64
seq2seq_config.mask = '[sMASK]'
seq2seq_config.max_src_length = 24
seq2seq_config.max_tgt_length = 6
seq2seq_config.decode = {'num_beams': 2, 'no_repeat_ngram_size': 2}
"""


def _commands(directory: pathlib.Path, predictions: pathlib.Path) -> list[list[str]]:
  common = [f"--gin_file={directory / 'eval.gin'}", f"--gin_file={directory / 'ckpt' / 'model.gin'}",
            f"--checkpoint={directory / 'ckpt'}"]  # fmt: skip
  from tasks import seq2seq as seq2seq_tasks

  return [
    ["eval", *common, f"--gin.DataConfig.mixture_or_task_name='{seq2seq_tasks.task_name(TASK)}'", "--generate=0",
     f"--predictions={predictions}", "--decode_batch_size=3"],
    ["eval", *common, "--gin.DataConfig.mixture_or_task_name='glm_lambada'", "--gin.DataConfig.eval_split='test'",
     f"--gin.language_model_config.lambada_file='{directory / 'lambada_test.jsonl'}'", "--lm=0"],
  ]  # fmt: skip


def _evaluate(directory: pathlib.Path, predictions: pathlib.Path, hosts: list[str]) -> list[dict]:
  import gin

  from glm_jax import main
  from glm_jax.data import seq2seq
  from tasks import seq2seq as seq2seq_tasks

  name = seq2seq_tasks.register_seq2seq_task(TASK, str(directory))
  try:
    results = []
    for command in _commands(directory, predictions):
      gin.clear_config()
      results.append(main.run([*command, *hosts]))
    return results
  finally:
    gin.clear_config()
    import seqio

    seqio.TaskRegistry.remove(name)
    seq2seq.REGISTERED.pop(name, None)


def _data(directory: pathlib.Path) -> None:
  import flax.linen as nn
  import jax

  from glm_jax.convert import checkpoint as convert
  from glm_jax.model import GLM, GLMConfig
  from glm_jax.train import checkpoints
  from tasks import pretrain

  for split in ("train", "val"):
    (directory / f"{split}.source").write_text("\n".join(SOURCES) + "\n")
    (directory / f"{split}.target").write_text("\n".join(s.split()[1] for s in SOURCES) + "\n")
  (directory / "lambada_test.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in PASSAGES))
  (directory / "eval.gin").write_text(GIN)
  vocabulary = pretrain.task_vocabulary()
  config = GLMConfig(vocab_size=vocabulary.vocab_size, num_layers=1, hidden_size=32, num_heads=4, max_length=64)
  ids = np.zeros((1, 8), np.int32)
  params = nn.unbox(GLM(config).init(jax.random.key(5), ids, ids, ids, sep=np.array([8]))["params"])
  params = jax.tree.map(lambda x: 3.0 * np.asarray(x), params)  # sharper: distinct spans and scores
  ckpt = directory / "ckpt"
  checkpoints.save_params(str(ckpt), config, params)
  checkpoints.save_vocabulary(str(ckpt), vocabulary)
  convert.write_model_gin(str(ckpt), with_tokenizer=True)


@pytest.mark.slow
def test_two_processes_evaluate_as_one(tmp_path, two_processes):
  _data(tmp_path)
  shared = tmp_path / "predictions.2.jsonl"
  outs = [tmp_path / f"results.{p}.json" for p in range(2)]
  two_processes(__file__, lambda coordinator, p: [str(tmp_path), str(shared), coordinator, str(p), str(outs[p])],
                TIMEOUT_S)  # fmt: skip

  alone = tmp_path / "predictions.1.jsonl"
  want = _evaluate(tmp_path, alone, [])  # this process, its 8 devices
  assert want[0]["generated_examples"] == len(SOURCES) and want[1]["lambada_examples"] == len(PASSAGES)
  lines = [json.loads(line) for line in alone.read_text().splitlines()]
  assert len({line["prediction"] for line in lines}) > 1, lines  # distinct summaries: the comparison means something
  assert shared.read_text() == alone.read_text()
  for out in outs:
    got = json.loads(out.read_text())
    for g, w in zip(got, want):
      assert g.keys() == w.keys()
      for key in w:
        assert g[key] == pytest.approx(w[key], rel=1e-5, abs=1e-6), key


if __name__ == "__main__":
  directory, predictions, coordinator, process, out = sys.argv[1:]
  hosts = [f"--coordinator_address={coordinator}", "--num_processes=2", f"--process_id={process}"]
  results = _evaluate(pathlib.Path(directory), pathlib.Path(predictions), hosts)
  pathlib.Path(out).write_text(json.dumps(results))
  # Leave only when both processes are done: the coordination service's shutdown barrier (os._exit skips the atexit
  # one), so process 0 cannot close its sockets while process 1 still reads the last collective's data.
  import jax

  jax.distributed.shutdown()
  os._exit(0)
