"""Downstream classification as cloze filling (glm_jax.data.cloze): GLM's fine-tuning Tasks.

Tasks (features and vocabulary as the pretraining Tasks, so `train` fine-tunes on them unchanged, e.g. with a
converted checkpoint's model.gin; `eval` reports their loss; `cloze_accuracy` and `python -m glm_jax.main eval
--cloze` score every verbalizer and report classification accuracy):
  glm_sst2_cloze   TFDS glue/sst2 ("{sentence} It was really [MASK]." with terrible / great, PET's pattern),
                   read from $TFDS_DATA_DIR when a dataset is made (prepare it first: `tfds build glue/sst2`)
`register_cloze_task(name, source, template)` adds one over any seqio DataSource whose examples hold the
template's fields and an integer label, and records the template in glm_jax.data.cloze.TEMPLATES.
"""

from __future__ import annotations

import functools

import seqio

from glm_jax.data import cloze, sources
from tasks import pretrain

SST2 = cloze.ClozeTemplate("{sentence} It was really [MASK].", {0: "terrible", 1: "great"})


def register_cloze_task(name: str, source: seqio.DataSource, template: cloze.ClozeTemplate) -> None:
  """A Task `name` of cloze examples of `template` over `source` (the labelled examples)."""
  seqio.TaskRegistry.add(
    name,
    source=source,
    output_features=pretrain.output_features(),
    preprocessors=[functools.partial(cloze.cloze_preprocessor, template=template)],
  )
  cloze.TEMPLATES[name] = template


register_cloze_task("glm_sst2_cloze", sources.tfds_source("glue/sst2:2.0.0"), SST2)
