"""Decoded GLM examples of a registered Task or Mixture, and their model features (the `inspect` command).

  python -m glm_jax.main inspect --mixture glm_embedded --num_examples 4 --length 128 \
      [--gin_file gin/data/glm10b.gin] [--gin.TokenObjective.mask_ratio=0.3] [--out ex.npz] [--pack]

Each example prints Part A (its mask tokens visible) and each Part B span with the position of its mask in A.
`out` saves the converted features (the model features of docs/design.md, one array [N, L] each; with `pack`,
N packed rows; with `candidates` C, a cloze Task's C candidate rows per example, with their example and candidate
indices and the right candidate, to compare a rendering id for id with the reference's). Ends with the pipeline's
skip counters.
"""

from __future__ import annotations

import numpy as np
import seqio

from glm_jax.data import counters, example as example_lib, feature_converter
from glm_jax.data.example import SpecialIds


def describe(example: dict[str, np.ndarray], vocabulary) -> str:
  """Part A and the B spans of one task-feature example, decoded; a cloze example's candidate rows one by one."""
  if "cloze_candidate" in example:
    candidate, label = example["cloze_candidate"], example["cloze_label"]
    lines = []
    for c in np.unique(candidate):
      row = {name: example[name][candidate == c] for name in example_lib.FEATURES}
      right = " (the right one)" if label.size and int(label[0]) == c else ""
      lines += [f"  candidate {int(c)}{right}:", describe(row, vocabulary)]
    return "\n".join(lines)
  part_a, spans = example_lib.split(example)
  ids = SpecialIds.from_vocabulary(vocabulary)
  names = {ids.mask: "[MASK]", ids.smask: "[sMASK]", ids.gmask: "[gMASK]"}
  lines = [
    f"  length {example['input_ids'].size}, Part A ({part_a.size} tokens): {vocabulary.decode(part_a.tolist())!r}"
  ]
  for position, tokens in spans:
    mask = names.get(int(part_a[position]), "?")
    lines.append(f"  span at A[{position}] {mask} ({tokens.size} tokens): {vocabulary.decode(tokens.tolist())!r}")
  return "\n".join(lines)


def inspect_task(
  name: str,
  *,
  num_examples: int = 4,
  length: int = 128,
  split: str = "validation",
  seed: int = 0,
  out: str | None = None,
  pack: bool = False,
  candidates: int | None = None,
) -> dict[str, np.ndarray]:
  """Prints `num_examples` examples of the Task or Mixture `name` and the pipeline's counters; with `out`, saves
  the converted model features there (.npz) and returns them (else {}). With `candidates` (C), the cloze layout:
  `num_examples` examples as C rows each, with their example index, candidate index and right candidate
  (`example_index`, `candidate_index` [N], `cloze_label` [N, L])."""
  provider = seqio.get_mixture_or_task(name)
  lengths = feature_converter.task_feature_lengths(length, cloze=candidates is not None)
  # A cloze example holds its C candidates' rows: longer than one row, so seqio must not trim it to the length.
  ds = provider.get_dataset(lengths, split=split, shuffle=False, seed=seed, trim_output_features=candidates is None)
  vocabulary = provider.output_features["input_ids"].vocabulary
  for i, example in enumerate(ds.take(num_examples).as_numpy_iterator()):
    print(f"example {i}:")
    print(describe(example, vocabulary))
  features = {}
  if out:
    converter = feature_converter.GLMFeatureConverter(pack=pack, candidates=candidates)
    per_example = candidates or 1
    rows = list(converter(ds, lengths).take(num_examples * per_example).as_numpy_iterator())
    features = {name: np.stack([row[name] for row in rows]) for name in converter.MODEL_FEATURES}
    if candidates:
      features["example_index"] = np.arange(len(rows), dtype=np.int32) // candidates
      features["candidate_index"] = np.arange(len(rows), dtype=np.int32) % candidates
    np.savez(out, **features)
    print(f"saved {len(rows)} rows of {sorted(features)} [N, L] = {features['input_ids'].shape} to {out}")
  print("counters:")
  print(counters.format_counts(counters.snapshot()))
  return features
