"""Import of THUDM GLM checkpoints (PyTorch, HF or Megatron/DeepSpeed format) and their tokenizers.

    config, params = glm_jax.convert.from_pytorch("glm-large/")      # any model-parallel size, fp16/bf16/fp32
    logits = GLM(config).apply({"params": params}, ids, pos, block_pos, sep=sep)   # = the reference's logits
    glm_jax.convert.to_pytorch(config, params, "exported/")          # HF folder; exact round trip
    python -m glm_jax.convert --from_pytorch glm-large/ --output_dir ckpt/ --vocab_files vocab.txt
    vocab = glm_jax.convert.tokenizers.bert_wordpiece("vocab.txt")   # seqio Vocabulary with `special_ids`

torch and tokenizers (the `[convert]` extra) are imported only inside the functions that need them; the
tokenizers module (TensorFlow, seqio) is not imported by this package: `from glm_jax.convert import tokenizers`.
"""

from glm_jax.convert.checkpoint import convert_checkpoint, load_converted, save_converted  # noqa: F401
from glm_jax.convert.presets import PUBLISHED, published  # noqa: F401
from glm_jax.convert.pytorch import ImportedCheckpoint, from_pytorch, to_pytorch  # noqa: F401
