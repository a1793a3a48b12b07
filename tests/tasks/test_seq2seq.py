"""tasks/seq2seq.py: the summarization Tasks read the reference's plain-text layout (or TFDS) and make the rows of
glm_jax.data.seq2seq; a missing blank binding or rows too short for the lengths are named."""

from __future__ import annotations

import gin
import numpy as np
import pytest
import seqio

from glm_jax.data import example, feature_converter, seq2seq
from tasks import pretrain, seq2seq as seq2seq_tasks

PAIRS = [("the parser reads the file and returns a list of values", "it reads files"),
         ("each class defines methods that write the stream", "classes write")]  # fmt: skip


@pytest.fixture
def toy_task(tmp_path):
  for split in ("train", "val"):
    (tmp_path / f"{split}.source").write_text("\n".join(s for s, _ in PAIRS) + "\n")
    (tmp_path / f"{split}.target").write_text("\n".join(t for _, t in PAIRS) + "\n")
  name = f"toy_{abs(hash(str(tmp_path))) % 10**8}"
  gin.clear_config()
  yield seq2seq_tasks.register_seq2seq_task(name, str(tmp_path))
  gin.clear_config()
  seqio.TaskRegistry.remove(seq2seq_tasks.task_name(name))
  seq2seq.REGISTERED.pop(seq2seq_tasks.task_name(name), None)


def _rows(task: str, length: int = 64):
  converter = feature_converter.GLMFeatureConverter(pack=False)
  lengths = feature_converter.task_feature_lengths(length)
  ds = seqio.get_dataset(task, lengths, dataset_split="validation", shuffle=False, feature_converter=converter)
  return list(ds.as_numpy_iterator())


def test_rows_are_the_examples_of_the_plain_text_layout(toy_task):
  gin.parse_config(["seq2seq_config.mask = '[sMASK]'", "seq2seq_config.max_src_length = 24",
                    "seq2seq_config.max_tgt_length = 8"])  # fmt: skip
  vocabulary = pretrain.task_vocabulary()
  ids = example.SpecialIds.from_vocabulary(vocabulary)
  rows = _rows(toy_task)
  assert len(rows) == len(PAIRS)
  for row, (source, target) in zip(rows, PAIRS):
    want, _, _ = seq2seq.example(source, target, vocabulary, ids, mask="[sMASK]", max_src_length=24, max_tgt_length=8)
    size = want["input_ids"].size
    for name in ("input_ids", "target_ids", "position_ids", "block_position_ids", "sep"):
      np.testing.assert_array_equal(row[name][:size], want[name], err_msg=name)
    assert not row["loss_mask"][size:].any()  # padding after the row trains nothing


def test_a_missing_blank_or_short_rows_are_named(toy_task):
  gin.parse_config(["seq2seq_config.max_src_length = 24", "seq2seq_config.max_tgt_length = 8"])
  with pytest.raises(Exception, match="bind seq2seq_config.mask"):
    _rows(toy_task)
  gin.parse_config(["seq2seq_config.mask = '[MASK]'"])
  with pytest.raises(Exception, match="cannot hold max_src_length=24 \\+ max_tgt_length=8"):
    _rows(toy_task, length=16)
  with pytest.raises(ValueError, match="expected one of"):
    seq2seq_tasks.seq2seq_config(mask="[gMASK]")


def test_the_reference_datasets_are_registered_with_their_settings():
  for name, (src, tgt) in {"cnn_dailymail": (608, 160), "xsum": (608, 60), "gigaword": (192, 32)}.items():
    assert seqio.get_mixture_or_task(seq2seq_tasks.task_name(name)) is not None
    assert seq2seq_tasks.lengths(name) == (src, tgt)


WORDS = ["red", "blue", "green", "small", "large", "old"]


def _toy_copy(directory, rng) -> None:
  """A learnable summarization: the summary repeats the source's three words (the source pads them with filler)."""
  for split, n in (("train", 300), ("val", 16)):
    sources, targets = [], []
    for _ in range(n):
      words = list(rng.choice(WORDS, 3, replace=False))
      sources.append(" ".join(["the", words[0], "and", words[1], "and", words[2], "things"]))
      targets.append(" ".join(words))
    (directory / f"{split}.source").write_text("\n".join(sources) + "\n")
    (directory / f"{split}.target").write_text("\n".join(targets) + "\n")


TOY = """
include 'gin/models/tiny.gin'
model_preset.overrides = {'max_length': 32, 'num_layers': 2}
experiment.data = @DataConfig()
DataConfig.mixture_or_task_name = '{task}'
DataConfig.eval_split = 'validation'
experiment.train_config = @TrainConfig()
TrainConfig.num_steps = {steps}
TrainConfig.batch_size = 16
TrainConfig.length = 32
TrainConfig.log_every = 50
TrainConfig.eval_every = 1000
TrainConfig.eval_steps = 1
TrainConfig.checkpoint_every = 1000
TrainConfig.loss = @LossConfig()
LossConfig.label_smoothing = 0.1
experiment.optimizer_config = @OptimizerConfig()
OptimizerConfig.learning_rate = 3e-3
OptimizerConfig.warmup_steps = 0
OptimizerConfig.decay_style = 'constant'
seq2seq_config.mask = '[sMASK]'
seq2seq_config.max_src_length = 20
seq2seq_config.max_tgt_length = 8
seq2seq_config.decode = {'num_beams': 2}
"""


@pytest.mark.slow
def test_fine_tuning_a_toy_summarization_reaches_high_rouge(tmp_path):
  import json

  import jax

  from glm_jax import main

  _toy_copy(tmp_path, np.random.default_rng(0))
  name = seq2seq_tasks.register_seq2seq_task("toy_copy", str(tmp_path))
  # Compiled here, not read from the session's compilation cache: an executable read back from it after
  # tests/test_main.py filled it deadlocked in XLA:CPU's 8-device all-reduce rendezvous (40 s, then abort).
  cached = jax.config.jax_enable_compilation_cache
  jax.config.update("jax_enable_compilation_cache", False)
  try:
    results = {}
    for run, steps in (("trained", 150), ("untrained", 0)):  # num_steps=0: the initialized model, saved as step 0
      gin_file = tmp_path / f"{run}.gin"
      gin_file.write_text(TOY.replace("{task}", name).replace("{steps}", str(steps)))
      main.run(["train", f"--gin_file={gin_file}", f"--model_dir={tmp_path / run}"])
      out = tmp_path / f"{run}.jsonl"
      results[run] = main.run(["eval", f"--gin_file={gin_file}", f"--checkpoint={tmp_path / run}", "--generate=0",
                               f"--predictions={out}"])  # fmt: skip
      lines = [json.loads(line) for line in out.read_text().splitlines()]
      assert len(lines) == 16 and results[run]["generated_examples"] == 16
    assert results["trained"]["rouge1"] >= 0.9 and results["trained"]["rougeL"] >= 0.9, results
    assert results["untrained"]["rouge1"] <= 0.3, results
  finally:
    jax.config.update("jax_enable_compilation_cache", cached)
    seqio.TaskRegistry.remove(name)
    seq2seq.REGISTERED.pop(name, None)
