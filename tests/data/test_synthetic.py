"""The synthetic data: the toy RTE's files read as SuperGLUE RTE, and its labels follow its rule."""

import collections

from glm_jax.data import superglue, superglue_sources, synthetic


def test_the_toy_rte_reads_as_superglue_rte_and_follows_its_rule(tmp_path):
  directory = synthetic.write_toy_rte(str(tmp_path), train=200, validation=30, seed=3)
  train = superglue_sources.read_examples("rte", directory, "train")
  validation = superglue_sources.read_examples("rte", directory, "validation")
  assert (len(train), len(validation)) == (200, 30)
  for ex in train + validation:
    premise_adjective = ex.text_a.rstrip(".").split()[-1]
    hypothesis_adjective = ex.text_b.rstrip(".").split()[-1]
    assert ex.label == ("entailment" if premise_adjective == hypothesis_adjective else "not_entailment"), ex
  labels = collections.Counter(ex.label for ex in train)
  assert 70 <= labels["entailment"] <= 130, labels  # drawn evenly: chance is about half
  question = superglue.cloze("rte", train[0], 0)
  assert question.label is not None and "[MASK]" in question.text()
  again = synthetic.write_toy_rte(str(tmp_path / "again"), train=200, validation=30, seed=3)
  assert superglue_sources.read_examples("rte", again, "train") == train  # the seed fixes the files
