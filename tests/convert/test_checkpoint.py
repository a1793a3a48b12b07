"""The convert command: a PyTorch checkpoint in, an orbax checkpoint + config out, restoring to the same params."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from glm_jax import convert, main
from glm_jax.convert import pytorch as pt
from glm_jax.model import GLMConfig
from glm_jax.train import checkpoints

CONFIG = GLMConfig(vocab_size=128, num_layers=2, hidden_size=16, num_heads=2, max_length=8)


def write_random_hf(directory, seed=0):
  rng = np.random.default_rng(seed)
  sd = {k: torch.from_numpy(rng.standard_normal(s).astype(np.float32)) for k, s in pt.torch_shapes(CONFIG).items()}
  directory.mkdir(parents=True)
  torch.save(sd, directory / "pytorch_model.bin")
  (directory / "config.json").write_text(json.dumps(pt.hf_config_dict(CONFIG)))
  return directory


def test_the_convert_command_writes_a_checkpoint_that_restores_to_the_same_params(tmp_path):
  source = write_random_hf(tmp_path / "hf")
  assert main.run(["convert", "--from_pytorch", str(source), "--output_dir", str(tmp_path / "out")]) == CONFIG
  config, params = checkpoints.load_params(str(tmp_path / "out"))
  expected_config, expected = convert.from_pytorch(source)
  assert config == expected_config == CONFIG
  assert jax.tree.structure(params) == jax.tree.structure(expected)
  for x, y in zip(jax.tree.leaves(params), jax.tree.leaves(expected)):
    np.testing.assert_array_equal(x, y)
  assert (tmp_path / "out" / "0" / "model_config").exists() and (tmp_path / "out" / "0" / "state").exists()


def test_convert_refuses_a_directory_holding_a_checkpoint(tmp_path):
  source = write_random_hf(tmp_path / "hf")
  convert.convert_checkpoint(str(source), str(tmp_path / "out"))
  with pytest.raises(FileExistsError, match="already holds a checkpoint"):
    convert.convert_checkpoint(str(source), str(tmp_path / "out"))


def test_load_params_of_an_empty_directory_says_what_to_run(tmp_path):
  with pytest.raises(FileNotFoundError, match="glm_jax.main convert"):
    checkpoints.load_params(str(tmp_path))


@pytest.mark.slow
def test_python_m_glm_jax_main_convert(tmp_path):
  source = write_random_hf(tmp_path / "hf")
  subprocess.run(
    [
      sys.executable,
      "-m",
      "glm_jax.main",
      "convert",
      "--from_pytorch",
      str(source),
      "--output_dir",
      str(tmp_path / "out"),
      "--no_scan_layers",
    ],
    check=True,
  )
  config, params = checkpoints.load_params(str(tmp_path / "out"))
  assert not config.scan_layers and "layers_1" in params


def test_training_library_reads_the_converted_checkpoint(tmp_path):
  source = write_random_hf(tmp_path / "hf")
  convert.convert_checkpoint(str(source), str(tmp_path / "out"))
  _, expected = convert.from_pytorch(source)
  assert checkpoints.load_model_config(str(tmp_path / "out")) == CONFIG
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), expected)
  params = checkpoints.restore_params(str(tmp_path / "out"), abstract)
  for x, y in zip(jax.tree.leaves(params), jax.tree.leaves(expected)):
    np.testing.assert_array_equal(np.asarray(x), y)


def _tiny_sentencepiece(tmp_path, lines) -> str:
  """A 24-piece SentencePiece model trained on `lines` (the Chinese tokenizer family reads such a file)."""
  import sentencepiece as spm

  corpus = tmp_path / "corpus.txt"
  corpus.write_text("\n".join(list(lines) * 20))
  spm.SentencePieceTrainer.train(
    input=str(corpus), model_prefix=str(tmp_path / "sp"), vocab_size=24, model_type="unigram",
    character_coverage=1.0, minloglevel=2,
  )  # fmt: skip
  return str(tmp_path / "sp.model")


def _convert_with_tokenizer(source, output_dir, sp_model, *, family="chinese_sp"):
  flags = [f"--from_pytorch={source}", f"--output_dir={output_dir}", f"--vocab_files={sp_model}"]
  return main.run(["convert", *flags, *([f"--tokenizer={family}"] if family else [])])


def test_vocabulary_files_are_kept_with_the_checkpoint(tmp_path):
  pytest.importorskip("tokenizers")
  from glm_jax.data import tokenizers as glm_tokenizers

  sp_model = _tiny_sentencepiece(tmp_path, ["今天天气很好", "我们去公园散步", "hello world"])
  source = write_random_hf(tmp_path / "hf")
  with pytest.raises(ValueError, match="--tokenizer"):  # CONFIG is no published shape
    _convert_with_tokenizer(source, tmp_path / "a", sp_model, family=None)
  _convert_with_tokenizer(source, tmp_path / "out", sp_model)
  vocab = checkpoints.load_vocabulary(str(tmp_path / "out"))
  assert vocab.special_ids["[gMASK]"] == 24 + 9 and vocab.embedding_rows == CONFIG.padded_vocab_size
  assert vocab.encode("天气[gMASK]") == glm_tokenizers.chinese_sentencepiece(sp_model).encode("天气[gMASK]")
  config, _ = checkpoints.load_params(str(tmp_path / "out"))  # the tokenizer folder does not upset orbax
  assert config == CONFIG
  assert not (tmp_path / "a").exists()  # the bad flags failed before anything was written


def test_a_vocabulary_that_does_not_fit_fails_before_writing(tmp_path):
  pytest.importorskip("tokenizers")
  bert_vocab = pathlib.Path(__file__).resolve().parents[2] / ".." / "shared" / "vocab" / "bert-base-uncased-vocab.txt"
  if not bert_vocab.exists():
    pytest.skip(f"real BERT vocabulary not found at {bert_vocab}")
  source = write_random_hf(tmp_path / "hf")
  with pytest.raises(ValueError, match="do not fit 128 embedding rows"):
    convert.convert_checkpoint(str(source), str(tmp_path / "out"), vocab_files=[str(bert_vocab)], tokenizer="bert")
  assert not (tmp_path / "out").exists()


def test_model_gin_of_a_checkpoint_with_its_tokenizer_makes_the_tasks_use_that_tokenizer(tmp_path):
  pytest.importorskip("tokenizers")
  import gin
  import seqio

  from glm_jax import gin_config
  from glm_jax.data import feature_converter

  sp_model = _tiny_sentencepiece(tmp_path, ["the module defines a class", "a function returns the value of the object"])
  _convert_with_tokenizer(write_random_hf(tmp_path / "hf"), tmp_path / "out", sp_model)
  saved = checkpoints.load_vocabulary(str(tmp_path / "out"))
  gin.clear_config()
  try:
    gin_config.parse_gin([str(tmp_path / "out" / "model.gin")], [])
    from tasks import pretrain

    assert pretrain.VOCABULARY.special_ids == saved.special_ids
    assert pretrain.VOCABULARY.vocab_size == saved.vocab_size <= CONFIG.vocab_size
    ds = seqio.get_dataset(
      "glm_token_embedded",
      task_feature_lengths=feature_converter.task_feature_lengths(32),
      dataset_split="validation",
      shuffle=False,
      num_epochs=1,
      feature_converter=feature_converter.GLMFeatureConverter(pack=True),
    )
    rows = [row["input_ids"] for row, _ in zip(ds.as_numpy_iterator(), range(4))]
    ids = np.concatenate(rows)
    assert ids.max() < saved.vocab_size
    assert saved.special_ids["[MASK]"] in ids and saved.special_ids["[sop]"] in ids
  finally:
    gin.clear_config()
  from tasks import pretrain

  assert pretrain.VOCABULARY.vocab_size != saved.vocab_size  # unbound again: the default vocabulary
