"""Blank infilling of texts: the `infer` command's work, with the text conventions of THUDM's generate_samples.py.

A text becomes a prompt (a Part A of token ids): [CLS] first; a text with no blank gets the generation mask
appended ([gMASK] for a model trained with task masks, [MASK] for the others: GLMConfig.task_mask, which the
checkpoint's config records); [eos] after Part A unless it ends with [gMASK]. glm_jax.infer.generate fills the
blanks in position order; each span is decoded back into the text in place of its blank.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable, Sequence

from etils import epath
from tqdm import tqdm

from glm_jax.data import example
from glm_jax.data.example import SpecialIds
from glm_jax.infer.decode import DecodeOptions, generate
from glm_jax.model import GLM


@dataclasses.dataclass(frozen=True)
class Infilled:
  """A text with its blanks filled: `output` (the text, each blank replaced by its span), the spans' texts and
  scores (glm_jax.infer.Generation.scores)."""

  text: str
  output: str
  spans: list[str]
  scores: list[float]

  def as_json(self) -> dict:
    return dataclasses.asdict(self)


def prompt(token_ids: Sequence[int], ids: SpecialIds, task_mask: bool) -> tuple[list[int], bool]:
  """(the prompt of a text's tokens, whether the generation mask was appended) by the reference's conventions."""
  tokens = [ids.cls, *token_ids]
  appended = not any(t in ids.masks for t in tokens)
  if appended:
    tokens.append(ids.gmask if task_mask else ids.mask)
  if tokens[-1] != ids.gmask:
    tokens.append(ids.eos)
  return tokens, appended


def infill(
  model: GLM,
  params,
  vocabulary,
  texts: Sequence[str],
  options: DecodeOptions,
  batch_size: int = 8,
  progress: Callable[[int], None] | None = None,
) -> list[Infilled]:
  """Fills the blanks of every text, `batch_size` texts per call of glm_jax.infer.generate (`progress(n)` after each
  call). Raises ValueError naming the first text longer than the model."""
  ids = SpecialIds.from_vocabulary(vocabulary)
  prompts = [prompt(example.encode_text(vocabulary, text, ids), ids, model.config.task_mask) for text in texts]
  for i, (tokens, _) in enumerate(prompts):
    if len(tokens) > model.config.max_length:
      raise ValueError(
        f"text {i + 1} is {len(tokens)} tokens long with [CLS], its blanks and [eos], more than the model's "
        f"max_length={model.config.max_length}: shorten it"
      )
  results = []
  for start in range(0, len(texts), batch_size):
    chunk = prompts[start : start + batch_size]
    generations = generate(model, params, [tokens for tokens, _ in chunk], ids=ids, options=options)
    for text, (tokens, appended), generation in zip(texts[start : start + batch_size], chunk, generations):
      spans = [vocabulary.decode(span).strip() for span in generation.spans]
      output = _output(text, appended, spans, vocabulary, ids)
      if output is None:  # the mask tokens are not in the text one for one: decode the filled tokens instead
        output = vocabulary.decode(filled_tokens(tokens, generation.spans, ids))
      results.append(Infilled(text, output, spans, generation.scores))
    if progress:
      progress(len(chunk))
  return results


def _output(text: str, appended: bool, spans: list[str], vocabulary, ids: SpecialIds) -> str | None:
  if appended:  # a continuation
    return f"{text.rstrip()} {spans[0]}" if spans[0] else text
  return splice_spans(text, vocabulary, ids, spans)


def filled_tokens(prompt_tokens: Sequence[int], spans: Sequence[Sequence[int]], ids: SpecialIds) -> list[int]:
  """The prompt's tokens without [CLS] and [eos], each blank replaced by its span."""
  spans = iter(spans)
  out: list[int] = []
  for token in prompt_tokens:
    if token in ids.masks:
      out.extend(next(spans))
    elif token not in (ids.cls, ids.eos):
      out.append(token)
  return out


def splice_spans(text: str, vocabulary, ids: SpecialIds, spans: Sequence[str]) -> str | None:
  """`text` with its k-th mask token replaced by spans[k], the rest of the text kept character for character
  (decoding the whole filled sequence would re-normalize its whitespace). None when the mask tokens cannot be
  found in the text one for one."""
  names = [vocabulary.decode([mask]) for mask in ids.masks]
  if not all(names):
    return None
  pattern = re.compile("|".join(re.escape(n) for n in sorted(set(names), key=len, reverse=True)))
  pieces = pattern.split(text)
  if len(pieces) != len(spans) + 1:
    return None
  out = [pieces[0]]
  for span, piece in zip(spans, pieces[1:]):
    out += [span, piece]
  return "".join(out)


def infer(
  model: GLM,
  params,
  vocabulary,
  options: DecodeOptions,
  texts: Sequence[str] | None = None,
  input_path: str | None = None,
  output_path: str | None = None,
  batch_size: int = 8,
) -> list[Infilled]:
  """The `infer` command's work: fills `texts`, or those of the JSON-lines file `input_path` (with a progress bar on
  a terminal), and writes the results to `output_path` (JSON lines) when given."""
  if bool(texts) == bool(input_path):
    raise ValueError("infer takes its texts from --text (repeatable) or from --input FILE.jsonl: give one of the two")
  texts = list(texts) if texts else read_texts(input_path)
  with tqdm(total=len(texts), unit="text", disable=None if input_path else True) as bar:
    results = infill(model, params, vocabulary, texts, options, batch_size, bar.update)
  if output_path:
    write_results(output_path, results)
  return results


def read_texts(path: str) -> list[str]:
  """The texts of a JSON-lines file, one {"text": ...} object a line (blank lines skipped). Raises ValueError naming
  the first line that is not such an object."""
  texts = []
  with epath.Path(path).open() as f:
    for number, line in enumerate(f, start=1):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f'{path}:{number} is not JSON ({e.msg}); expected one {{"text": ...}} object a line') from e
      if not isinstance(record, dict) or not isinstance(record.get("text"), str):
        raise ValueError(f'{path}:{number} has no "text" string; expected one {{"text": ...}} object a line')
      texts.append(record["text"])
  return texts


def write_results(path: str, results: Sequence[Infilled]) -> None:
  """One JSON object a line: text, output, spans, scores."""
  with epath.Path(path).open("w") as f:
    for result in results:
      f.write(json.dumps(result.as_json(), ensure_ascii=False) + "\n")
