"""Tests for glm_jax.data.vocab: special tokens, reproducible cached training, the command, save / load."""

from __future__ import annotations

import os

import pytest
import seqio
import tensorflow as tf

from glm_jax import main
from glm_jax.data import example, vocab


@pytest.fixture(scope="session")
def default_vocab(tmp_path_factory):
  """The default vocabulary, built once per session in a cache shared by the data tests."""
  os.environ["GLM_JAX_CACHE"] = str(tmp_path_factory.getbasetemp() / "glm_jax_cache")
  return vocab.default_vocabulary()


# Twelve embedded documents (~15k characters): small vocabularies train on them in a fraction of a second.
SMALL_CORPUS = vocab.embedded_corpus_texts()[:12]


def test_specials_are_distinct_single_ids(default_vocab):
  ids = {name: example.special_id(default_vocab, name) for name in vocab.SPECIAL_TOKENS}
  assert len(set(ids.values())) == len(vocab.SPECIAL_TOKENS)
  assert ids["[pad]"] == 0 == default_vocab.pad_id and ids["[eos]"] == 1 == default_vocab.eos_id
  assert ids["[UNK]"] == default_vocab.unk_id
  assert example.special_id(default_vocab, "[ENC]") == ids["[CLS]"]
  assert default_vocab.vocab_size == vocab.DEFAULT_VOCAB_SIZE
  for name in vocab.USER_DEFINED_SPECIALS:
    encoded = default_vocab.encode(f"before{name}after")
    assert encoded.count(ids[name]) == 1
    assert default_vocab.decode(encoded) == f"before{name}after"


def test_round_trip_and_tf_ops_match_python(default_vocab):
  texts = [
    "The [MASK] statement is used for [sMASK] conditional execution.",
    "Unicode falls back to bytes: été, 中文, emoji \U0001f600.",
    "x",
  ]
  for text in texts:
    assert default_vocab.decode(default_vocab.encode(text)) == text
  ragged = default_vocab.encode_tf(tf.constant(texts))
  assert ragged.to_list() == [default_vocab.encode(t) for t in texts]


def test_special_id_errors_name_the_fix(default_vocab):
  with pytest.raises(KeyError, match=r"\[nope\].*\[MASK\]"):
    example.special_id(default_vocab, "[nope]")
  with pytest.raises(TypeError, match="special_ids"):
    example.special_id(seqio.PassThroughVocabulary(10), "[MASK]")


def test_training_is_reproducible_and_depends_on_the_corpus():
  settings = vocab.TrainSettings(vocab_size=400)
  first = vocab.train_model(SMALL_CORPUS, settings)
  assert vocab.train_model(SMALL_CORPUS, settings) == first
  assert vocab.train_model(SMALL_CORPUS[:11], settings) != first
  with pytest.raises(ValueError, match="empty corpus"):
    vocab.train_model(["", "  \n "], settings)


def test_cache_trains_once_per_corpus_and_settings(default_vocab, tmp_path, monkeypatch):
  del default_vocab
  monkeypatch.setenv("GLM_JAX_CACHE", str(tmp_path))
  small = vocab.TrainSettings(vocab_size=400)
  path = vocab.cached_model_file(SMALL_CORPUS, small)
  assert path.startswith(str(tmp_path))
  stamp = os.stat(path).st_mtime_ns
  assert vocab.cached_model_file(SMALL_CORPUS, small) == path
  assert os.stat(path).st_mtime_ns == stamp
  assert vocab.cached_model_file(SMALL_CORPUS, vocab.TrainSettings(vocab_size=401)) != path
  with open(path, "rb") as f:
    assert f.read() == vocab.train_model(SMALL_CORPUS, small)


def test_command_writes_the_trained_model(tmp_path, monkeypatch):
  monkeypatch.setenv("GLM_JAX_CACHE", str(tmp_path / "cache"))
  (tmp_path / "a.txt").write_text("\n\n".join(" ".join(doc.split()) for doc in SMALL_CORPUS))
  (tmp_path / "b.jsonl").write_text('{"text": "A json document, also in the corpus."}\n')
  out = tmp_path / "out.model"
  main.run(["vocab", "--corpus", f"{tmp_path / '*.txt'},{tmp_path / '*.jsonl'}", "--vocab_size=390", f"--output={out}"])
  corpus = [" ".join(doc.split()) for doc in SMALL_CORPUS] + ["A json document, also in the corpus."]
  assert out.read_bytes() == vocab.train_model(corpus, vocab.TrainSettings(vocab_size=390))
  trained = vocab.GLMSentencePieceVocabulary(str(out))
  assert trained.vocab_size == 390 and example.special_id(trained, "[gMASK]") == trained.tokenizer.piece_to_id(
    "[gMASK]"
  )
  with pytest.raises(ValueError, match="matches no files"):
    main.run(["vocab", "--corpus", str(tmp_path / "*.none"), "--output", str(out)])
  with pytest.raises(ValueError, match="--corpus .* or --files with --family"):
    main.run(["vocab", f"--output={out}"])


def test_lazy_vocabulary_builds_on_first_use(default_vocab):
  made = []
  lazy = vocab.LazyVocabulary(lambda: made.append(1) or default_vocab)
  assert not made
  assert lazy.special_ids == default_vocab.special_ids and made == [1]
  assert lazy.encode("Hello world") == default_vocab.encode("Hello world")
  assert lazy.vocab_size == default_vocab.vocab_size and lazy == default_vocab and made == [1]


def test_save_and_load_rebuild_the_vocabulary_with_the_same_fingerprint(default_vocab, tmp_path):
  vocab.save(default_vocab, str(tmp_path / "tokenizer"))
  manifest = (tmp_path / "tokenizer" / vocab.MANIFEST).read_text()
  assert '"family": "sentencepiece"' in manifest and (tmp_path / "tokenizer" / "spm.model").exists()
  loaded = vocab.load(str(tmp_path / "tokenizer"))
  assert vocab.fingerprint(loaded) == vocab.fingerprint(default_vocab)
  assert loaded.special_ids == default_vocab.special_ids and loaded.encode("a [MASK] b") == default_vocab.encode(
    "a [MASK] b"
  )
  assert vocab.fingerprint(vocab.LazyVocabulary(lambda: default_vocab)) == vocab.fingerprint(default_vocab)
  other = vocab.GLMSentencePieceVocabulary(vocab.cached_model_file(SMALL_CORPUS, vocab.TrainSettings(vocab_size=400)))
  assert vocab.fingerprint(other) != vocab.fingerprint(default_vocab)
  assert vocab.load(str(tmp_path / "none")) is None
  with pytest.raises(TypeError, match="cannot be saved with a checkpoint"):
    vocab.save(seqio.PassThroughVocabulary(10), str(tmp_path / "x"))


def test_a_gs_directory_keeps_the_files_in_the_bucket_and_loads_through_a_local_copy(default_vocab, fake_bucket):
  vocab.save(default_vocab, "gs://bucket/run/tokenizer")
  assert (fake_bucket / "run" / "tokenizer" / "spm.model").exists()
  assert not os.path.exists("gs:")  # nothing under a local folder named after the URL
  loaded = vocab.load("gs://bucket/run/tokenizer")
  assert vocab.fingerprint(loaded) == vocab.fingerprint(default_vocab)
  assert not loaded.saved_form[1][0].startswith("gs://")  # read from a local copy


def test_a_vocabulary_trained_before_dblock_still_loads_without_it(tmp_path, monkeypatch):
  monkeypatch.setattr(vocab, "USER_DEFINED_SPECIALS", tuple(s for s in vocab.USER_DEFINED_SPECIALS if s != "[dBLOCK]"))
  model = tmp_path / "old.model"
  model.write_bytes(vocab.train_model(SMALL_CORPUS, vocab.TrainSettings(vocab_size=600)))
  monkeypatch.undo()
  old = vocab.GLMSentencePieceVocabulary(str(model))
  assert "[dBLOCK]" not in old.special_ids and example.SpecialIds.from_vocabulary(old).dblock is None
  assert example.SpecialIds.from_vocabulary(vocab.default_vocabulary()).dblock is not None
