"""Tests for glm_jax.data.sources: the embedded TFDS corpus, user text files with malformed input, TFDS by name."""

from __future__ import annotations

import json
import os

import pytest
import seqio

from glm_jax.data import counters, sources


@pytest.fixture(scope="session")
def embedded(tmp_path_factory):
  """The embedded corpus TFDS builder, built once per session in the cache shared by the data tests."""
  os.environ["GLM_JAX_CACHE"] = str(tmp_path_factory.getbasetemp() / "glm_jax_cache")
  return sources.embedded_builder()


def _texts(ds) -> list[str]:
  return [ex["text"].decode() for ex in ds.as_numpy_iterator()]


def test_embedded_splits_are_nonempty_disjoint_and_match_the_corpus(embedded):
  assert embedded.info.splits["train"].num_examples > 300
  assert embedded.info.splits["validation"].num_examples > 10
  source = sources.EmbeddedCorpusSource()
  train = _texts(source.get_dataset("train", shuffle=False))
  validation = _texts(source.get_dataset("validation", shuffle=False))
  assert not set(train) & set(validation)
  for split, texts in (("train", train), ("validation", validation)):
    assert sorted(texts) == sorted(text for _, text in sources.embedded_documents(split))
  # Real prose, several sentences each; only a topic shorter than MIN_DOCUMENT_CHARS is a shorter document.
  assert sum(len(t) >= sources.MIN_DOCUMENT_CHARS for t in train) > 0.9 * len(train)
  assert sum(len(t) for t in train) > 400_000


def test_embedded_shards_partition_the_split(embedded):
  del embedded
  source = sources.EmbeddedCorpusSource()
  whole = _texts(source.get_dataset("validation", shuffle=False))
  shards = [_texts(source.get_dataset("validation", shuffle=False, shard_info=seqio.ShardInfo(i, 3))) for i in range(3)]
  assert sorted(sum(shards, [])) == sorted(whole) and all(shards)


def test_jsonl_malformed_lines_are_skipped_and_counted(tmp_path):
  lines = [
    json.dumps({"text": "First document."}).encode(),
    b"{not json",
    json.dumps({"body": "x"}).encode(),
    json.dumps(["a list"]).encode(),
    json.dumps({"text": 3}).encode(),
    json.dumps({"text": "  "}).encode(),
    b'{"text": "bad \xff utf8"}',
    b"",
    json.dumps({"text": "Second, with a\nnewline."}).encode(),
  ]
  path = tmp_path / "docs.jsonl"
  path.write_bytes(b"\n".join(lines) + b"\n")
  counters.reset()
  assert list(sources.read_documents(str(path))) == ["First document.", "Second, with a\nnewline."]
  assert counters.snapshot("text_files/") == {
    "text_files/documents": 2,
    "text_files/empty_documents": 1,
    "text_files/invalid_json": 1,
    "text_files/invalid_utf8": 1,
    "text_files/missing_text": 3,
  }


def test_txt_documents_are_separated_by_blank_lines(tmp_path):
  path = tmp_path / "docs.txt"
  path.write_bytes(b"\n\nOne line.\nSame document.\r\n\r\n  \n\nSecond \xff\xfe doc.\n\n\t\nThird.\n\n")
  (tmp_path / "blank.txt").write_bytes(b"  \n\n \n")
  counters.reset()
  assert list(sources.read_documents(str(path))) == ["One line.\nSame document.", "Third."]
  assert list(sources.read_documents(str(tmp_path / "blank.txt"))) == []
  assert list(sources.read_documents(str(tmp_path / "missing.txt"))) == []
  assert counters.snapshot("text_files/") == {
    "text_files/documents": 2,
    "text_files/empty_documents": 1,
    "text_files/invalid_utf8": 1,
    "text_files/unreadable_files": 1,
  }


def _write_corpus(tmp_path, n: int) -> list[str]:
  docs = [f"Document number {i} says something about topic {i % 7}." for i in range(n)]
  (tmp_path / "a.txt").write_text("\n\n".join(docs[: n // 2]))
  (tmp_path / "b.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs[n // 2 :]))
  return docs


def test_text_files_hash_split_is_disjoint_and_complete(tmp_path):
  docs = _write_corpus(tmp_path, 200)
  config = sources.TextFilesConfig(pattern=f"{tmp_path}/*.txt,{tmp_path}/*.jsonl", validation_fraction=0.2)
  source = sources.TextFilesSource(lambda: config)
  train = _texts(source.get_dataset("train", shuffle=False))
  validation = _texts(source.get_dataset("validation", shuffle=False))
  assert sorted(train + validation) == sorted(docs) and not set(train) & set(validation)
  assert 15 <= len(validation) <= 65  # 20% of 200 within sampling error
  assert validation == [d for d in docs if sources.in_validation(d, 0.2)]
  shuffled = _texts(source.get_dataset("train", shuffle=True, seed=3))
  assert sorted(shuffled) == sorted(train)


def test_text_files_separate_validation_glob_and_missing_files(tmp_path):
  docs = _write_corpus(tmp_path, 10)
  config = sources.TextFilesConfig(pattern=str(tmp_path / "a.txt"), validation_pattern=str(tmp_path / "b.jsonl"))
  source = sources.TextFilesSource(config)
  assert _texts(source.get_dataset("train", shuffle=False)) == docs[:5]
  assert _texts(source.get_dataset("validation", shuffle=False)) == docs[5:]
  with pytest.raises(ValueError, match="GLM_JAX_TEXT_FILES"):
    sources.TextFilesSource(sources.TextFilesConfig(pattern=str(tmp_path / "*.none"))).get_dataset("train")
  with pytest.raises(ValueError, match="unknown split"):
    source.get_dataset("test")


def test_tfds_source_by_name_reads_nothing_until_used(tmp_path):
  source = sources.tfds_source("c4/en:3.0.1", data_dir=str(tmp_path))
  assert isinstance(source, seqio.TfdsDataSource)
  assert set(source.splits) == {"train", "validation"}
  assert not os.listdir(tmp_path)


def test_text_files_iterator_position_can_be_checkpointed(tmp_path):
  """Exact resume saves the tf.data iterator of the user's text: its source must be tf.data state, not a
  Python generator (which tf.train.Checkpoint refuses)."""
  import tensorflow as tf

  for i in range(3):
    (tmp_path / f"{i}.txt").write_text("\n\n".join(f"document {i}-{j} text." for j in range(4)))
  config = sources.TextFilesConfig(pattern=str(tmp_path / "*.txt"), validation_pattern=str(tmp_path / "0.txt"))
  iterator = iter(sources.TextFilesSource(config).get_dataset("train", shuffle=False))
  next(iterator)
  checkpoint = tf.train.Checkpoint(iterator=iterator)
  path = checkpoint.write(str(tmp_path / "ckpt" / "it"))
  expected = [next(iterator)["text"].numpy() for _ in range(5)]
  checkpoint.read(path)
  assert [next(iterator)["text"].numpy() for _ in range(5)] == expected
