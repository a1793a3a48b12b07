"""Import and export of THUDM GLM checkpoints (PyTorch, HF or Megatron/DeepSpeed format).

    config, params = glm_jax.convert.from_pytorch("glm-large/")      # any model-parallel size, fp16/bf16/fp32
    logits = GLM(config).apply({"params": params}, ids, pos, block_pos, sep=sep)   # = the reference's logits
    glm_jax.convert.to_pytorch(config, params, "exported/")          # HF folder; exact round trip
    python -m glm_jax.main convert --from_pytorch glm-large/ --output_dir ckpt/ --vocab_files vocab.txt

The tokenizers of the published checkpoints are glm_jax.data.tokenizers; the shapes, glm_jax.model.PRESETS.
torch and tokenizers (the `[convert]` extra) are imported only inside the functions that need them.
"""

from glm_jax.convert.checkpoint import convert_checkpoint  # noqa: F401
from glm_jax.convert.pytorch import ImportedCheckpoint, from_pytorch, to_pytorch  # noqa: F401
