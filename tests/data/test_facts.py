"""The facts corpus: its sentences, documents, blanks and the check of a fill."""

import re

import pytest

from glm_jax.data import facts


def test_every_sentence_blanks_its_answer_once_and_reads_back():
  world = facts.sentences()
  assert len(world) == len({s.text for s in world}) > 150  # distinct sentences, a few hundred
  for sentence in world:
    masked = sentence.masked()
    assert masked.count("[MASK]") == 1 and (masked[0].isupper() or masked.startswith("[MASK]"))
    assert masked.replace("[MASK]", sentence.shown_answer) == sentence.text
    assert re.fullmatch(r"[A-Z][A-Za-z ]+\.", sentence.text)
    assert facts.fill_is_correct(sentence.shown_answer + ".", sentence)


def test_splits_are_drawn_from_the_world_with_their_own_seeds():
  world = {s.text for s in facts.sentences()}
  train, validation = facts.documents("train"), facts.documents("validation")
  assert len(train) == facts.SIZES["train"] and len(validation) == facts.SIZES["validation"]
  assert set(train) <= world and set(validation) <= world and len(set(train)) == len(world)
  assert train[: len(validation)] != validation and facts.documents("train") == train  # deterministic
  with pytest.raises(ValueError, match="splits .*'validation'.*got 'test'"):
    facts.documents("test")


def test_fill_is_correct_reads_the_first_word_of_the_fill():
  sentence = next(s for s in facts.sentences() if s.text == "The capital of France is Paris.")
  assert facts.fill_is_correct("Paris", sentence) and facts.fill_is_correct(" paris. The", sentence)
  assert not facts.fill_is_correct("Rome", sentence) and not facts.fill_is_correct("", sentence)
  assert not facts.fill_is_correct("the Paris", sentence)
  blanks = facts.quiz(50)
  assert len(set(blanks)) == 50 and blanks == facts.quiz(50) and blanks != facts.quiz(50, 3)
  with pytest.raises(ValueError, match=f"quiz takes 1..{len(facts.sentences())} sentences; got n=1000"):
    facts.quiz(1000)
