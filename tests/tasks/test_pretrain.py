"""Tests for tasks/pretrain.py: each Task end-to-end through seqio.get_dataset and the feature converter,
mixture rates, gin bindings, the user-text Tasks and the lazily registered TFDS Tasks."""

from __future__ import annotations

import json
import os
import unicodedata

import gin
import numpy as np
import pytest
import seqio

from glm_jax.data import counters, example, feature_converter, sources

L = 48
MASK_NAMES = {"[MASK]": "token", "[sMASK]": "sentence", "[gMASK]": "document"}


@pytest.fixture(scope="session")
def glm_tasks(tmp_path_factory):
  """`import tasks` with the vocabulary and embedded corpus cached once per session for the data tests."""
  os.environ["GLM_JAX_CACHE"] = str(tmp_path_factory.getbasetemp() / "glm_jax_cache")
  import tasks

  return tasks.pretrain


@pytest.fixture
def clean_gin():
  gin.clear_config()
  yield
  gin.clear_config()


def _normalized(text: str) -> str:
  return " ".join(unicodedata.normalize("NFKC", text).split())


def _segments(row: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
  """The examples packed into one converted row, without padding."""
  return [
    {name: row[name][row["segment_ids"] == s] for name in example.FEATURES}
    for s in range(1, int(row["segment_ids"].max()) + 1)
  ]


def _objective(example, special) -> str:
  part_a = example["input_ids"][: int(example["sep"][0])]
  kinds = {kind for name, kind in MASK_NAMES.items() if np.any(part_a == getattr(special, name.strip("[]").lower()))}
  assert len(kinds) == 1, kinds
  return kinds.pop()


def test_fixed_names_are_registered_and_tfds_is_not_read(glm_tasks):
  del glm_tasks
  for objective in ("token", "sentence", "document"):
    for source in ("embedded", "text", "c4"):
      assert seqio.get_mixture_or_task(f"glm_{objective}_{source}").name == f"glm_{objective}_{source}"
  for mixture in ("glm_embedded", "glm_facts", "glm_text", "glm_c4"):
    assert len(seqio.get_mixture_or_task(mixture).tasks) == 3
  c4 = seqio.get_mixture_or_task("glm_token_c4").source
  assert isinstance(c4, sources.CheckedTfdsSource) and c4._source is None  # resolved and checked at first use
  features = seqio.get_mixture_or_task("glm_token_embedded").output_features
  assert set(features) == set(feature_converter.GLMFeatureConverter.TASK_FEATURES)


@pytest.mark.parametrize("pack", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("objective", ["token", "sentence", "document"])
def test_task_end_to_end(glm_tasks, objective, pack):
  vocabulary = glm_tasks.VOCABULARY
  special = example.SpecialIds.from_vocabulary(vocabulary)

  def rows(seed):
    ds = seqio.get_dataset(
      f"glm_{objective}_embedded",
      feature_converter.task_feature_lengths(L),
      dataset_split="validation",
      shuffle=False,
      seed=seed,
      feature_converter=feature_converter.GLMFeatureConverter(pack),
    )
    return list(ds.take(6).as_numpy_iterator())

  first = rows(3)
  corpus = "\n".join(_normalized(text) for _, text in sources.embedded_documents("validation"))
  for row in first:
    assert set(row) == set(feature_converter.GLMFeatureConverter.MODEL_FEATURES)
    assert all(v.shape == (L,) for v in row.values())
    segments = _segments(row)
    assert len(segments) >= 1 and (len(segments) > 1) <= pack
    for ex in segments:
      sep = int(ex["sep"][0])
      np.testing.assert_array_equal(ex["loss_mask"], np.arange(ex["sep"].size) >= sep)
      assert _objective(ex, special) == objective
      assert np.all(ex["objective_ids"] == example.OBJECTIVES.index(objective))
      piece = vocabulary.decode(example.reconstruct(ex, special).tolist())
      assert _normalized(piece) in corpus
  again, other = rows(3), rows(4)
  for a, b in zip(first, again):
    for name in a:
      np.testing.assert_array_equal(a[name], b[name])
  assert any(not np.array_equal(a["input_ids"], b["input_ids"]) for a, b in zip(first, other))


def test_facts_tasks_blank_the_facts_in_a_vocabulary_that_spells_each_word_in_one_piece(glm_tasks):
  from glm_jax.data import facts

  vocabulary = seqio.get_mixture_or_task("glm_facts").output_features["input_ids"].vocabulary
  assert vocabulary != glm_tasks.VOCABULARY  # its own, not the default vocabulary the other Tasks share
  words = {w for s in facts.sentences() for w in s.text.rstrip(".").split()}
  assert all(len(vocabulary.encode(w)) == 1 for w in words), "a word of the world in pieces"
  special = example.SpecialIds.from_vocabulary(vocabulary)
  world = {s.text for s in facts.sentences()}
  for objective in ("token", "sentence", "document"):
    ds = seqio.get_dataset(
      f"glm_{objective}_facts",
      feature_converter.task_feature_lengths(L),
      dataset_split="validation",
      shuffle=False,
      feature_converter=feature_converter.GLMFeatureConverter(True),
    )
    for row in ds.take(2).as_numpy_iterator():
      segments = _segments(row)
      assert len(segments) > 1  # one-sentence documents pack several to a row
      for ex in segments:
        assert _objective(ex, special) == objective
        assert vocabulary.decode(example.reconstruct(ex, special).tolist()).strip() in world


def _objective_counts(glm_tasks, n: int) -> dict[str, int]:
  special = example.SpecialIds.from_vocabulary(glm_tasks.VOCABULARY)
  ds = seqio.get_mixture_or_task("glm_embedded").get_dataset(
    feature_converter.task_feature_lengths(32), split="train", shuffle=False, seed=11
  )
  counts = {"token": 0, "sentence": 0, "document": 0}
  for ex in ds.take(n).as_numpy_iterator():
    counts[_objective(ex, special)] += 1
  return counts


@pytest.mark.parametrize(
  "bindings,rates",
  [
    ([], (0.5, 0.3, 0.2)),
    (
      ["glm_mixture_rates.token = 1.0", "glm_mixture_rates.sentence = 1.0", "glm_mixture_rates.document = 8.0"],
      (0.1, 0.1, 0.8),
    ),
  ],
  ids=["glm10b", "gin"],
)
def test_mixture_rates(glm_tasks, clean_gin, bindings, rates):
  gin.parse_config(bindings)
  n = 600
  counts = _objective_counts(glm_tasks, n)
  for (kind, count), rate in zip(counts.items(), rates):
    sigma = np.sqrt(rate * (1 - rate) / n)
    assert abs(count / n - rate) < 4 * sigma, (kind, counts)


def test_gin_objective_settings_apply_after_import(glm_tasks, clean_gin):
  del glm_tasks

  def masked_fraction():
    ds = seqio.get_dataset(
      "glm_token_embedded",
      feature_converter.task_feature_lengths(64),
      dataset_split="train",
      shuffle=False,
      seed=0,
      feature_converter=feature_converter.GLMFeatureConverter(False),
    )
    rows = list(ds.take(20).as_numpy_iterator())
    spans = sum(int((r["block_position_ids"] == 1).sum()) for r in rows)
    masked = sum(float(r["loss_mask"].sum()) for r in rows) - spans
    return masked / (sum(int(r["segment_ids"].sum()) - 1 for r in rows) - 2 * spans)

  default = masked_fraction()
  gin.parse_config(["TokenObjective.mask_ratio = 0.5", "TokenObjective.max_span_length = 5"])
  assert default < 0.25 < 0.45 < masked_fraction()
  with pytest.raises(ValueError, match="mask_rate"):
    gin.parse_config(["TokenObjective.mask_rate = 0.5"])


def test_text_tasks_read_the_users_files(glm_tasks, clean_gin, tmp_path, monkeypatch):
  del glm_tasks
  docs = [f"User document {i}. It has two sentences about item {i}." for i in range(40)]
  (tmp_path / "a.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs) + "{broken\n")
  monkeypatch.setenv("GLM_JAX_TEXT_FILES", str(tmp_path / "*.jsonl"))
  counters.reset()
  ds = seqio.get_dataset(
    "glm_sentence_text",
    feature_converter.task_feature_lengths(L),
    dataset_split="train",
    shuffle=False,
    seed=0,
    feature_converter=feature_converter.GLMFeatureConverter(pack=False),
  )
  rows = list(ds.as_numpy_iterator())
  train_docs = [d for d in docs if not sources.in_validation(d, 0.05)]
  assert len(rows) == len(train_docs)  # each short document is one example
  assert counters.snapshot("text_files/invalid_json") == {"text_files/invalid_json": 1}
  gin.parse_config([f"text_files_config.pattern = '{tmp_path}/*.none'"])
  with pytest.raises(ValueError, match="no files match"):
    seqio.get_dataset(
      "glm_token_text", feature_converter.task_feature_lengths(L), feature_converter.GLMFeatureConverter(pack=False)
    )


def test_data_gin_files_bind_the_objectives(glm_tasks, clean_gin):
  repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  gin.add_config_file_search_path(repo)
  gin.parse_config_files_and_bindings([os.path.join(repo, "gin/data/text.gin")], ["glm_mixture_rates.document = 0.4"])
  assert glm_tasks.glm_mixture_rates() == {"token": 0.5, "sentence": 0.3, "document": 0.4}
  assert glm_tasks.TokenObjective().poisson_lambda == 3.0 and glm_tasks.DocumentObjective().min_ratio == 0.5
  assert glm_tasks.text_files_config().pattern == "corpus/*.txt,corpus/*.jsonl"


def _prepare_tiny_c4(data_dir, version: str, documents: list[str]) -> None:
  """A prepared TFDS c4/en directory of `version` with these documents (what `tfds build` would leave there)."""
  import tensorflow_datasets as tfds
  from tensorflow_datasets.core import registered

  with registered.skip_registration():

    class C4(tfds.core.GeneratorBasedBuilder):
      VERSION = tfds.core.Version(version)
      BUILDER_CONFIGS = [tfds.core.BuilderConfig(name="en")]
      url_infos = None  # no checksums file to look up beside this test's code (nothing is downloaded)

      def _info(self):
        features = tfds.features.FeaturesDict({"text": tfds.features.Text(), "url": tfds.features.Text()})
        return tfds.core.DatasetInfo(builder=self, features=features)

      def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(documents), "validation": self._generate_examples(documents[:1])}

      def _generate_examples(self, texts):
        for i, text in enumerate(texts):
          yield i, {"text": text, "url": f"u{i}"}

    C4(config="en", data_dir=str(data_dir)).download_and_prepare()


def test_the_c4_version_is_a_binding_and_an_unloadable_one_fails_at_the_first_read(glm_tasks, clean_gin, tmp_path):
  del glm_tasks
  lengths = feature_converter.task_feature_lengths(L)
  converter = feature_converter.GLMFeatureConverter(pack=False)
  read = lambda: next(  # noqa: E731
    iter(seqio.get_dataset("glm_document_c4", lengths, converter, dataset_split="train", shuffle=False))
  )
  with gin.unlock_config():
    gin.bind_parameter("c4_config.data_dir", str(tmp_path))
  # Not prepared: one line naming what this TFDS builds and how to prepare it.
  with pytest.raises(ValueError, match=r"'c4/en:3.1.0' .* not prepared there \(TFDS .* builds c4/en at 3.1.0, "
                     r"2.3.1.*\); prepare one with `tfds build c4/en:3.1.0 --data_dir="):  # fmt: skip
    read()
  # A prepared 3.0.1 directory (as T5X and MaxText read it), which this TFDS no longer builds, loads once bound.
  _prepare_tiny_c4(tmp_path, "3.0.1", ["A first document. It has two sentences.", "A second one."])
  with gin.unlock_config():
    gin.bind_parameter("c4_config.version", "3.0.1")
  row = read()
  assert int(np.count_nonzero(row["segment_ids"])) > 0
  with gin.unlock_config():
    gin.bind_parameter("c4_config.version", "9.9.9")
  with pytest.raises(ValueError, match="TFDS cannot build that version and no prepared copy of it is there"):
    read()


def test_per_objective_weighting_gives_each_objective_its_rate_of_the_gradient(glm_tasks, clean_gin):
  """The reference draws one objective per micro-batch and averages micro-batch token means, so objective o gets its
  rate r_o of the gradient (pretrain_glm.py:263-268). Mixed per example, a plain token mean gives each objective its
  share of Part B tokens instead; LossConfig(objective_weights=rates) gives each its rate again."""
  from glm_jax.train import step

  ds = seqio.get_mixture_or_task("glm_embedded").get_dataset(
    feature_converter.task_feature_lengths(128), split="train", shuffle=False, seed=5
  )
  ds = feature_converter.GLMFeatureConverter(pack=True)(ds, feature_converter.task_feature_lengths(128))
  batch = next(ds.batch(64).as_numpy_iterator())
  rates = glm_tasks.glm_mixture_rates()
  ids = [example.OBJECTIVES.index(name) for name in rates]

  def shares(weights):
    w = np.asarray(step.token_weights(batch["loss_mask"], batch["objective_ids"], weights))
    assert np.all(w[batch["loss_mask"] == 0] == 0)
    return np.array([w[batch["objective_ids"] == i].sum() for i in ids])

  tokens = np.array([batch["loss_mask"][batch["objective_ids"] == i].sum() for i in ids])
  np.testing.assert_allclose(shares(None), tokens / tokens.sum(), rtol=1e-5)
  weighted = shares(step.LossConfig(objective_weights=rates).weight_vector())
  np.testing.assert_allclose(weighted, np.array(list(rates.values())) / sum(rates.values()), rtol=1e-5)
  # The plain token mean favours the document objective: its examples carry the most Part B tokens.
  assert tokens[2] / tokens.sum() > rates["document"] + 0.1, tokens
