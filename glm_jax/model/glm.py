"""GLM v1 in Flax: learned word + position + block-position embeddings, pre-LN blocks, tied logits.

    h = dropout(W_word[input_ids] + W_pos[position_ids] + W_block[block_position_ids])
    for each layer:  h = h + dropout(Attn(LN(h)));  h = h + dropout(MLP(LN(h)))
    logits = LN_final(h) @ W_word.T

Every parameter carries logical axis names (`vocab`, `embed`, `heads`, `kv`, `mlp`, `layers`); the rules table
in glm_jax/train/partitioning.py maps them to mesh axes. Model code never names a mesh.
"""
from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from glm_jax import ops
from glm_jax.model.config import GLMConfig
from glm_jax.ops import mask as mask_lib

_REMAT_POLICIES = {
    "minimal": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "full": jax.checkpoint_policies.nothing_saveable,
}
# Logical names of activations; the rules table decides how (or whether) they are sharded.
ACTIVATION_AXES = ("activation_batch", "activation_length", "activation_embed")


def _init(std: float, names: tuple[str | None, ...]):
  return nn.with_logical_partitioning(nn.initializers.normal(std), names)


def _constant(value: float, names: tuple[str | None, ...]):
  return nn.with_logical_partitioning(nn.initializers.constant(value), names)


class LayerNorm(nn.Module):
  """LayerNorm over E with eps from the config; statistics in float32."""
  config: GLMConfig

  @nn.compact
  def __call__(self, x):
    cfg = self.config
    return nn.LayerNorm(
        epsilon=cfg.layernorm_eps, dtype=cfg.jnp_dtype, param_dtype=cfg.jnp_param_dtype,
        scale_init=_constant(1.0, ("embed",)), bias_init=_constant(0.0, ("embed",)), name="norm")(x)


class Attention(nn.Module):
  """Fused-QKV multi-head self-attention with the GLM mask, through glm_jax.ops.attention."""
  config: GLMConfig
  deterministic: bool = True

  @nn.compact
  def __call__(self, x, sep, segment_ids):
    cfg = self.config
    h, d = cfg.num_heads, cfg.head_dim
    qkv = nn.DenseGeneral(
        features=(3, h, d), axis=-1, dtype=cfg.jnp_dtype, param_dtype=cfg.jnp_param_dtype,
        kernel_init=_init(cfg.init_std, ("embed", None, "heads", "kv")),
        bias_init=_constant(0.0, (None, "heads", "kv")), name="query_key_value")(x)  # [B, L, 3, H, D]
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    dropout_rate = 0.0 if self.deterministic else cfg.attention_dropout
    out = ops.attention(
        q, k, v, sep=sep, segment_ids=segment_ids, implementation=cfg.attention_implementation,
        dropout_rate=dropout_rate, dropout_rng=self.make_rng("dropout") if dropout_rate > 0 else None)
    return nn.DenseGeneral(
        features=cfg.hidden_size, axis=(-2, -1), dtype=cfg.jnp_dtype, param_dtype=cfg.jnp_param_dtype,
        kernel_init=_init(cfg.init_std / math.sqrt(2.0 * cfg.num_layers), ("heads", "kv", "embed")),
        bias_init=_constant(0.0, ("embed",)), name="dense")(out)


class MLP(nn.Module):
  """E -> 4E -> E with tanh-approximated GELU (as GLM v1)."""
  config: GLMConfig

  @nn.compact
  def __call__(self, x):
    cfg = self.config
    x = nn.Dense(cfg.mlp_dim, dtype=cfg.jnp_dtype, param_dtype=cfg.jnp_param_dtype,
                 kernel_init=_init(cfg.init_std, ("embed", "mlp")), bias_init=_constant(0.0, ("mlp",)),
                 name="dense_h_to_4h")(x)
    x = nn.gelu(x, approximate=True)
    return nn.Dense(cfg.hidden_size, dtype=cfg.jnp_dtype, param_dtype=cfg.jnp_param_dtype,
                    kernel_init=_init(cfg.init_std / math.sqrt(2.0 * cfg.num_layers), ("mlp", "embed")),
                    bias_init=_constant(0.0, ("embed",)), name="dense_4h_to_h")(x)


class Block(nn.Module):
  """One pre-LN transformer layer. Returns (h, None) so it can be the body of nn.scan."""
  config: GLMConfig
  deterministic: bool = True

  @nn.compact
  def __call__(self, x, sep, segment_ids):
    cfg = self.config
    dropout = nn.Dropout(cfg.hidden_dropout, deterministic=self.deterministic)
    attn = Attention(cfg, self.deterministic, name="attention")(
        LayerNorm(cfg, name="input_layernorm")(x), sep, segment_ids)
    x = x + dropout(attn)
    mlp = MLP(cfg, name="mlp")(LayerNorm(cfg, name="post_attention_layernorm")(x))
    x = x + dropout(mlp)
    return nn.with_logical_constraint(x, ACTIVATION_AXES), None


class GLM(nn.Module):
  """The GLM v1 model. See docs/design.md for the features and the attention rule."""
  config: GLMConfig

  @nn.compact
  def __call__(self, input_ids, position_ids, block_position_ids, *, sep, segment_ids=None,
               deterministic: bool = True):
    """input_ids, position_ids, block_position_ids int [B, L]; sep int [B] or [B, L]; segment_ids int [B, L].

    Returns float32 logits [B, L, V] with V = config.padded_vocab_size.
    """
    cfg = self.config
    length = input_ids.shape[1]
    if length > cfg.max_length:
      raise ValueError(f"sequence length {length} exceeds max_length={cfg.max_length} of the position tables "
                       f"(raise GLMConfig.max_length or shorten the inputs)")
    sep, segment_ids = mask_lib.canonicalize(sep, segment_ids, length)

    embed = lambda rows, name, names: nn.Embed(  # noqa: E731
        rows, cfg.hidden_size, dtype=cfg.jnp_dtype, param_dtype=cfg.jnp_param_dtype,
        embedding_init=_init(cfg.init_std, names), name=name)
    word_embeddings = embed(cfg.padded_vocab_size, "word_embeddings", ("vocab", "embed"))
    x = (word_embeddings(input_ids)
         + embed(cfg.max_length + 1, "position_embeddings", (None, "embed"))(position_ids)
         + embed(cfg.max_length + 1, "block_position_embeddings", (None, "embed"))(block_position_ids))
    x = nn.Dropout(cfg.embedding_dropout, deterministic=deterministic)(x)
    x = nn.with_logical_constraint(x, ACTIVATION_AXES)

    block = Block
    if cfg.remat_policy != "none":
      block = nn.remat(Block, policy=_REMAT_POLICIES[cfg.remat_policy], prevent_cse=not cfg.scan_layers)
    if cfg.scan_layers:
      stack = nn.scan(
          block, variable_axes={"params": 0}, split_rngs={"params": True, "dropout": True},
          in_axes=(nn.broadcast, nn.broadcast), length=cfg.num_layers,
          metadata_params={nn.PARTITION_NAME: "layers"})
      x, _ = stack(cfg, deterministic, name="layers")(x, sep, segment_ids)
    else:
      for i in range(cfg.num_layers):
        x, _ = block(cfg, deterministic, name=f"layers_{i}")(x, sep, segment_ids)

    x = LayerNorm(cfg, name="final_layernorm")(x)
    table = word_embeddings.embedding.astype(cfg.jnp_dtype)
    return jnp.einsum("ble,ve->blv", x, table, preferred_element_type=jnp.float32)


def stack_layers(params: dict, num_layers: int) -> dict:
  """Per-layer params (`layers_0`..`layers_{n-1}`, scan_layers=False) -> the scanned layout (`layers`)."""
  params = dict(params)
  layers = [params.pop(f"layers_{i}") for i in range(num_layers)]
  params["layers"] = jax.tree.map(lambda *xs: jnp.stack(xs), *layers)
  return params


def unstack_layers(params: dict, num_layers: int) -> dict:
  """The scanned layout (`layers`, leading axis = layer) -> per-layer params (`layers_0`, ...)."""
  params = dict(params)
  stacked = params.pop("layers")
  for i in range(num_layers):
    params[f"layers_{i}"] = jax.tree.map(lambda x, i=i: x[i], stacked)
  return params
