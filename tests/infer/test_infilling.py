"""Texts to prompts by the reference's conventions, spans back into the text, the `infer` command's files."""

import json

import numpy as np
import pytest

from glm_jax.data.example import SpecialIds
from glm_jax.infer import DecodeOptions, infilling

IDS = SpecialIds(pad=0, eos=1, cls=2, mask=3, smask=6, gmask=7, sop=4, eop=5)


def test_prompt_conventions_of_generate_samples():
  # A blank in the text: [CLS] first, [eos] after Part A.
  assert infilling.prompt([10, 3, 11], IDS, task_mask=True) == ([2, 10, 3, 11, 1], False)
  # No blank: the generation mask is appended, [gMASK] for task-mask models (no [eos] after it), else [MASK].
  assert infilling.prompt([10, 11], IDS, task_mask=True) == ([2, 10, 11, 7], True)
  assert infilling.prompt([10, 11], IDS, task_mask=False) == ([2, 10, 11, 3, 1], True)
  # A text ending with [gMASK] gets no [eos].
  assert infilling.prompt([10, 7], IDS, task_mask=False) == ([2, 10, 7], False)


class _CharVocab:
  """Characters as ids 10.. and the three mask names as single ids (a stand-in with real decode behaviour)."""

  names = {3: "[MASK]", 6: "[sMASK]", 7: "[gMASK]"}

  def decode(self, ids):
    return "".join(self.names.get(i, chr(i)) for i in ids)


def test_splice_spans_keeps_the_text_and_fills_masks_in_order():
  text = "The [MASK] module  works with [gMASK]"
  out = infilling.splice_spans(text, _CharVocab(), IDS, ["os", "paths."])
  assert out == "The os module  works with paths."
  assert infilling.splice_spans("no mask", _CharVocab(), IDS, ["x"]) is None
  assert infilling.filled_tokens([2, 10, 3, 11, 7, 1], [[20, 21], [22]], IDS) == [10, 20, 21, 11, 22]


def test_infill_fills_blanks_and_continues_texts_without_one(default_vocabulary_glm):
  vocabulary, model, params = default_vocabulary_glm(2, 128)
  texts = ["The [MASK] module provides functions for working with [MASK] paths.", "A text to continue"]
  options = DecodeOptions(max_span_length=3, stop_ids=())
  results = infilling.infill(model, params, vocabulary, texts, options, batch_size=1)
  first, second = results
  assert len(first.spans) == 2 and first.output.startswith("The ") and first.output.endswith(" paths.")
  assert "[MASK]" not in first.output
  assert len(second.spans) == 1 and second.output == f"A text to continue {second.spans[0]}"
  # Batched: the same texts; the scores agree to float rounding (a batch of 2 sums in another order).
  batched = infilling.infill(model, params, vocabulary, texts, options, batch_size=2)
  assert [(r.text, r.output, r.spans) for r in batched] == [(r.text, r.output, r.spans) for r in results]
  for got, want in zip(batched, results):
    np.testing.assert_allclose(got.scores, want.scores, rtol=1e-5)
  with pytest.raises(ValueError, match="text 2 is .* tokens long .* more than the model's max_length=128"):
    infilling.infill(model, params, vocabulary, ["a [MASK]", "word " * 200], options)


def test_infer_reads_and_writes_json_lines(tmp_path, default_vocabulary_glm):
  vocabulary, model, params = default_vocabulary_glm(2, 64)
  source = tmp_path / "in.jsonl"
  source.write_text('{"text": "a [MASK] b"}\n\n{"text": "c [sMASK]"}\n')
  out = tmp_path / "out.jsonl"
  options = DecodeOptions(max_span_length=2)
  results = infilling.infer(model, params, vocabulary, options, input_path=str(source), output_path=str(out))
  lines = [json.loads(line) for line in out.read_text().splitlines()]
  assert [r["text"] for r in lines] == ["a [MASK] b", "c [sMASK]"]
  assert lines == [r.as_json() for r in results] and set(lines[0]) == {"text", "output", "spans", "scores"}
  source.write_text('{"text": "a [MASK]"}\n{"txt": "b"}\n')
  with pytest.raises(ValueError, match=r"in.jsonl:2 has no \"text\" string"):
    infilling.read_texts(str(source))
  source.write_text("not json\n")
  with pytest.raises(ValueError, match=r"in.jsonl:1 is not JSON"):
    infilling.read_texts(str(source))
  with pytest.raises(ValueError, match="--text .* or from --input"):
    infilling.infer(model, params, vocabulary, options)
