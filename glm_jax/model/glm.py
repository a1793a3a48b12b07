"""GLM v1 in Flax: learned word + position + block-position embeddings, pre-LN blocks, tied logits.

    h = dropout(W_word[input_ids] + W_pos[position_ids] + W_block[block_position_ids])
    for each layer:  h = h + dropout(Attn(LN(h)));  h = h + dropout(MLP(LN(h)))
    logits = LN_final(h) @ W_word.T

Every parameter carries logical axis names (`vocab`, `embed`, `heads`, `kv`, `mlp`, `layers`); the rules table
in glm_jax/train/partitioning.py maps them to mesh axes. Model code never names a mesh.
"""

from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from glm_jax import ops
from glm_jax.model.cache import CACHE_AXES, KVCache, write_chunk
from glm_jax.model.config import GLMConfig
from glm_jax.ops import mask as mask_lib

_REMAT_POLICIES = {
  "minimal": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
  "full": jax.checkpoint_policies.nothing_saveable,
}
# Logit given to padded vocabulary rows: exp(x - max) underflows to exactly 0 in float32.
_MASKED_LOGIT = -1e30
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
      epsilon=cfg.layernorm_eps,
      dtype=cfg.jnp_dtype,
      param_dtype=cfg.jnp_param_dtype,
      scale_init=_constant(1.0, ("embed",)),
      bias_init=_constant(0.0, ("embed",)),
      name="norm",
    )(x)


class EinsumProjection(nn.Module):
  """y = einsum(equation, x, kernel) + bias, with `kernel` and `bias` declared in their final shapes.

  Replaces nn.DenseGeneral, which initializes a flattened 2-D kernel and reshapes it: under a mesh the
  kernel's 4-D logical constraint lands on the 2-D value and fails. The param names (`kernel`, `bias`) and
  shapes are DenseGeneral's, which glm_jax/convert and saved checkpoints rely on. Inputs and params are cast
  to `dtype` (the compute dtype), which is also the output dtype.
  """

  equation: str
  kernel_shape: tuple[int, ...]
  kernel_names: tuple[str | None, ...]
  bias_shape: tuple[int, ...]
  bias_names: tuple[str | None, ...]
  init_std: float
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    kernel = self.param("kernel", _init(self.init_std, self.kernel_names), self.kernel_shape, self.param_dtype)
    bias = self.param("bias", _constant(0.0, self.bias_names), self.bias_shape, self.param_dtype)
    y = jnp.einsum(self.equation, x.astype(self.dtype), kernel.astype(self.dtype), preferred_element_type=self.dtype)
    return y + bias.astype(self.dtype)


class Attention(nn.Module):
  """Fused-QKV multi-head self-attention with the GLM mask, through glm_jax.ops.attention.

  Params: `query_key_value` kernel [E, 3, H, D], bias [3, H, D]; `dense` (output) kernel [H, D, E], bias [E].
  """

  config: GLMConfig
  deterministic: bool = True
  in_place: bool = False

  @nn.compact
  def __call__(self, x, sep, segment_ids, layer_cache=None, cache_lengths=None):
    """x [B, L, E] -> ([B, L, E] in the compute dtype, this chunk's (k, v) [B, L, H, D] each).

    With `layer_cache` ((k, v) [B, H, C, D] of this layer's cache) and `cache_lengths` [B], the chunk's queries also
    attend every valid cache entry (glm_jax.ops.attention_cache). `in_place`: the chunk is first written into
    `layer_cache` and attended there; returns the updated buffers instead of the chunk's (k, v)."""
    cfg = self.config
    e, h, d = cfg.hidden_size, cfg.num_heads, cfg.head_dim
    dtypes = dict(dtype=cfg.jnp_dtype, param_dtype=cfg.jnp_param_dtype)
    qkv = EinsumProjection(
      "ble,ekhd->blkhd",
      (e, 3, h, d),
      ("embed", None, "heads", "kv"),
      (3, h, d),
      (None, "heads", "kv"),
      cfg.init_std,
      **dtypes,
      name="query_key_value",
    )(x)  # [B, L, 3, H, D]
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    cache = {}
    if layer_cache is not None:
      if self.in_place:
        write = functools.partial(write_chunk, lengths=cache_lengths, fresh=False, axes=CACHE_AXES[1:])
        layer_cache = (write(layer_cache[0], k), write(layer_cache[1], v))
      k_cache, v_cache = layer_cache
      cache = dict(k_cache=k_cache, v_cache=v_cache, cache_lengths=cache_lengths, chunk_in_cache=self.in_place)
    dropout_rate = 0.0 if self.deterministic else cfg.attention_dropout
    out = ops.attention(
      q,
      k,
      v,
      sep=sep,
      segment_ids=segment_ids,
      implementation=cfg.attention_implementation,
      dropout_rate=dropout_rate,
      dropout_rng=self.make_rng("dropout") if dropout_rate > 0 else None,
      partition_spec=nn.logical_to_mesh_axes(("activation_batch", "activation_length", "heads", "kv")),
      **cache,
    )
    out = EinsumProjection(
      "blhd,hde->ble",
      (h, d, e),
      ("heads", "kv", "embed"),
      (e,),
      ("embed",),
      cfg.init_std / math.sqrt(2.0 * cfg.num_layers),
      **dtypes,
      name="dense",
    )(out)
    return out, (layer_cache if self.in_place else (k, v))


class MLP(nn.Module):
  """E -> 4E -> E with tanh-approximated GELU (as GLM v1)."""

  config: GLMConfig

  @nn.compact
  def __call__(self, x):
    cfg = self.config
    x = nn.Dense(
      cfg.mlp_dim,
      dtype=cfg.jnp_dtype,
      param_dtype=cfg.jnp_param_dtype,
      kernel_init=_init(cfg.init_std, ("embed", "mlp")),
      bias_init=_constant(0.0, ("mlp",)),
      name="dense_h_to_4h",
    )(x)
    x = nn.gelu(x, approximate=True)
    return nn.Dense(
      cfg.hidden_size,
      dtype=cfg.jnp_dtype,
      param_dtype=cfg.jnp_param_dtype,
      kernel_init=_init(cfg.init_std / math.sqrt(2.0 * cfg.num_layers), ("mlp", "embed")),
      bias_init=_constant(0.0, ("embed",)),
      name="dense_4h_to_h",
    )(x)


class Block(nn.Module):
  """One pre-LN transformer layer: (h, the chunk's (k, v) when `return_kv`, else None), the body of nn.scan."""

  config: GLMConfig
  deterministic: bool = True
  return_kv: bool = False
  in_place: bool = False

  @nn.compact
  def __call__(self, x, sep, segment_ids, layer_cache=None, cache_lengths=None):
    cfg = self.config
    dropout = nn.Dropout(cfg.hidden_dropout, deterministic=self.deterministic)
    attn, kv = Attention(cfg, self.deterministic, self.in_place, name="attention")(
      LayerNorm(cfg, name="input_layernorm")(x), sep, segment_ids, layer_cache, cache_lengths
    )
    x = x + dropout(attn)
    mlp = MLP(cfg, name="mlp")(LayerNorm(cfg, name="post_attention_layernorm")(x))
    x = x + dropout(mlp)
    return nn.with_logical_constraint(x, ACTIVATION_AXES), (kv if self.return_kv else None)


class GLM(nn.Module):
  """The GLM v1 model. See docs/design.md for the features and the attention rule."""

  config: GLMConfig

  @nn.compact
  def __call__(
    self,
    input_ids,
    position_ids,
    block_position_ids,
    *,
    sep,
    segment_ids=None,
    cache: KVCache | None = None,
    deterministic: bool = True,
  ):
    """input_ids, position_ids, block_position_ids int [B, L]; sep int [B] or [B, L]; segment_ids int [B, L].

    Returns float32 logits [B, L, V] with V = config.padded_vocab_size. With a `cache` (glm_jax.model.cache), the
    L tokens are a chunk after the cache's entries (a fresh cache: the prefill of Part A): they attend every valid
    entry and, among themselves, the rule of their own `sep` and `segment_ids` (0 after a row's real tokens, which
    come first); returns (logits, the cache with the chunk's keys and values written after each row's entries).
    """
    cfg = self.config
    length = input_ids.shape[1]
    # A row of L tokens has position and block-position ids below L, and the tables have max_length + 1 rows, so
    # rows of max_length + 1 tokens fit (the reference's WikiText windows of --seq-length 1024 on GLM-10B).
    if length > cfg.max_length + 1:
      raise ValueError(
        f"sequence length {length} exceeds max_length={cfg.max_length} of the position tables (+ 1) "
        f"(raise GLMConfig.max_length or shorten the inputs)"
      )
    sep, segment_ids = mask_lib.canonicalize(sep, segment_ids, length)

    def embed(rows: int, name: str, row_axis: str | None, ids):
      """(the [rows, E] table module, its rows for ids [B, L] -> [B, L, E]).

      E is gathered before the lookup (FSDP's gather-before-use): left split over fsdp, the looked-up rows
      would keep E split and XLA would replicate them to re-split them by batch over data x fsdp.
      """
      table = nn.Embed(
        rows,
        cfg.hidden_size,
        dtype=cfg.jnp_dtype,
        param_dtype=cfg.jnp_param_dtype,
        embedding_init=_init(cfg.init_std, (row_axis, "embed")),
        name=name,
      )
      gathered = nn.with_logical_constraint(table.embedding, (row_axis, None))
      return table, jnp.take(gathered.astype(cfg.jnp_dtype), ids, axis=0)

    word_embeddings, words = embed(cfg.padded_vocab_size, "word_embeddings", "vocab", input_ids)
    _, positions = embed(cfg.max_length + 1, "position_embeddings", None, position_ids)
    _, block_positions = embed(cfg.max_length + 1, "block_position_embeddings", None, block_position_ids)
    x = words + positions + block_positions
    x = nn.Dropout(cfg.embedding_dropout, deterministic=deterministic)(x)
    x = nn.with_logical_constraint(x, ACTIVATION_AXES)

    # A fresh cache is filled by the ordinary attention (the flash kernels); a filled one is attended.
    layer_cache = None if cache is None or cache.fresh else (cache.k, cache.v)
    if cache is not None and cache.is_layered and cfg.scan_layers:
      raise ValueError("a layered cache (one buffer per layer) is for a model with scan_layers=False")
    lengths = None if layer_cache is None else cache.lengths
    block = Block
    if cfg.remat_policy != "none":
      block = nn.remat(Block, policy=_REMAT_POLICIES[cfg.remat_policy], prevent_cse=not cfg.scan_layers)
    if cfg.scan_layers:
      stack = nn.scan(
        block,
        variable_axes={"params": 0},
        split_rngs={"params": True, "dropout": True},
        in_axes=(nn.broadcast, nn.broadcast, 0, nn.broadcast),
        length=cfg.num_layers,
        metadata_params={nn.PARTITION_NAME: "layers"},
      )
      x, kv = stack(cfg, deterministic, cache is not None, name="layers")(x, sep, segment_ids, layer_cache, lengths)
    else:
      # A filled layered cache is written and attended layer by layer, each buffer updated in place.
      in_place = layer_cache is not None and cache.is_layered
      kvs = []
      for i in range(cfg.num_layers):
        this_layer = None if layer_cache is None else (layer_cache[0][i], layer_cache[1][i])
        x, layer_kv = block(cfg, deterministic, cache is not None, in_place, name=f"layers_{i}")(
          x, sep, segment_ids, this_layer, lengths
        )
        kvs.append(layer_kv)
      kv = None if cache is None else (tuple(k for k, _ in kvs), tuple(v for _, v in kvs))  # one entry per layer

    x = LayerNorm(cfg, name="final_layernorm")(x)
    table = word_embeddings.embedding.astype(cfg.jnp_dtype)
    logits = jnp.einsum("ble,ve->blv", x, table, preferred_element_type=jnp.float32)
    if cache is None:
      return logits
    return logits, _write(cache, kv, segment_ids)


def _write(cache: KVCache, kv, segment_ids) -> KVCache:
  """`cache` with the chunk's keys and values written at each row's length, and each length advanced by the row's
  real tokens (segment != 0, which come first). `kv`: (k, v) as the layers return them, [layers, B, L, H, D] from a
  scan, tuples of [B, L, H, D] per layer from unrolled layers; for a filled layered cache, the layers' own buffers
  with the chunk already written."""
  length = segment_ids.shape[1]
  if length > cache.capacity:
    raise ValueError(f"a chunk of {length} tokens does not fit a cache of {cache.capacity} entries per row")
  lengths = cache.lengths + jnp.sum(segment_ids != 0, axis=1, dtype=jnp.int32)
  if cache.is_layered and not cache.fresh:
    return KVCache(tuple(kv[0]), tuple(kv[1]), lengths)
  write = functools.partial(write_chunk, lengths=cache.lengths, fresh=cache.fresh)
  if cache.is_layered:
    put = lambda old, new: tuple(write(o, n, axes=CACHE_AXES[1:]) for o, n in zip(old, new))  # noqa: E731
  else:
    stack = lambda new: jnp.stack(new) if isinstance(new, tuple) else new  # noqa: E731
    put = lambda old, new: write(old, stack(new), axes=CACHE_AXES)  # noqa: E731
  return KVCache(put(cache.k, kv[0]), put(cache.v, kv[1]), lengths)


def forward(model: GLM, params, batch: dict, *, deterministic: bool, dropout_rng=None) -> jax.Array:
  """Logits [B, L, V] of a batch of model features (docs/design.md: input_ids, position_ids, block_position_ids,
  sep, segment_ids), the one way training, evaluation, scoring and decoding call the model."""
  rngs = None if deterministic else {"dropout": dropout_rng}
  return model.apply(
    {"params": params},
    batch["input_ids"],
    batch["position_ids"],
    batch["block_position_ids"],
    sep=batch["sep"],
    segment_ids=batch.get("segment_ids"),
    deterministic=deterministic,
    rngs=rngs,
  )


def mask_padded_vocab(logits: jax.Array, vocab_size: int) -> jax.Array:
  """logits [..., V_padded] -> the same with the padded vocabulary rows (ids >= vocab_size) set to a huge negative
  value, so a softmax, an argmax or a sample never picks them."""
  valid = jnp.arange(logits.shape[-1]) < vocab_size
  return jnp.where(valid, logits, _MASKED_LOGIT)


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
