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
