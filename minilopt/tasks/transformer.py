"""A small causal transformer: a character LM on the same corpus as `char_lm`.

    h_t    = E[c_t] + P[t]                                  token + learned position embedding
    h      ← h + Attn(LN(h))      } once per block          pre-layer-norm residual blocks
    h      ← h + MLP(LN(h))       }                         MLP: E → 4E → E, GELU
    loss   = mean_t −log softmax(LN(h_t) W + b)[c_{t+1}]

Attn is multi-head causal self-attention. Per head, with q, k, v the head's slices of
LN(h) W_qkv (each of width d = E / heads),

    A = softmax(q kᵀ / √d + M),   M[t, s] = 0 if s ≤ t else −∞,    head output = A v

and the heads' outputs are concatenated and mixed by W_o. The mask M lets position t
read only characters 0..t, so every position makes an honest next-character prediction.

LN normalises each position's features to zero mean and unit variance, then applies a
learned gain and bias. Putting it before each sublayer (pre-LN) leaves the residual
stream as an identity path from input to output, so the net trains without
learning-rate warmup.

Batches are the LSTM LM's: `batch_size` random windows of `seq_len + 1` characters.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from .. import nn
from .base import Task, check_batch_shape, pytree_dataclass, static
from .lm import CharLMTask


def layer_norm_init(width: int) -> dict:
    return {"gain": jnp.ones((width,)), "bias": jnp.zeros((width,))}


def layer_norm(params: dict, x, eps: float = 1e-5):
    """(x − mean) / √(var + eps) · gain + bias, over the last axis."""
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.var(x, axis=-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + eps) * params["gain"] + params["bias"]


def causal_self_attention(params: dict, x, heads: int):
    """x (B, S, E) → (B, S, E): multi-head attention of each position to itself and the past."""
    b, s, e = x.shape
    q, k, v = (t.reshape(b, s, heads, e // heads) for t in jnp.split(nn.linear(params["qkv"], x), 3, axis=-1))
    scores = jnp.einsum("bthd,bshd->bhts", q, k) / jnp.sqrt(e // heads)
    past = jnp.tril(jnp.ones((s, s), bool))
    # The smallest float rather than −inf: the future still gets weight exactly 0, and
    # a row with nothing visible would give a uniform row instead of NaN.
    scores = jnp.where(past, scores, jnp.finfo(scores.dtype).min)
    mixed = jnp.einsum("bhts,bshd->bthd", jax.nn.softmax(scores, axis=-1), v)
    return nn.linear(params["out"], mixed.reshape(b, s, e))


@pytree_dataclass
class CharTransformerTask(Task):
    init_scale: jnp.ndarray          # multiplies every random init (embeddings and weights)
    embed: int = static(32)
    heads: int = static(4)
    blocks: int = static(2)
    seq_len: int = static(32)
    batch_size: int = static(32)
    name: str = static("char_transformer")

    vocab = CharLMTask.vocab
    batch = CharLMTask.batch         # the same corpus, split and windows as the LSTM LM

    def init(self, key):
        keys = jax.random.split(key, 3 + self.blocks)
        scale, width = self.init_scale, self.embed

        def block(k):
            k_qkv, k_out, k_mlp = jax.random.split(k, 3)
            return {
                "ln_attn": layer_norm_init(width),
                "attn": {"qkv": nn.linear_init(k_qkv, width, 3 * width, scale),
                         "out": nn.linear_init(k_out, width, width, scale)},
                "ln_mlp": layer_norm_init(width),
                "mlp": nn.mlp_init(k_mlp, (width, 4 * width, width), scale),
            }

        return {
            "embed": scale * jax.random.normal(keys[0], (self.vocab, width)),
            "position": scale * jax.random.normal(keys[1], (self.seq_len, width)),
            "blocks": [block(k) for k in keys[3:]],
            "ln_out": layer_norm_init(width),
            "out": nn.linear_init(keys[2], width, self.vocab, scale),
        }

    def logits(self, params, inputs):
        """inputs (B, S') of character ids, S' ≤ seq_len → next-character logits (B, S', vocab)."""
        h = params["embed"][inputs] + params["position"][: inputs.shape[1]]
        for p in params["blocks"]:
            h = h + causal_self_attention(p["attn"], layer_norm(p["ln_attn"], h), self.heads)
            h = h + nn.mlp(p["mlp"], layer_norm(p["ln_mlp"], h), jax.nn.gelu)
        return nn.linear(params["out"], layer_norm(params["ln_out"], h))

    def loss(self, params, batch):
        check_batch_shape(self.name, "the batch of character windows", batch, (self.seq_len + 1,))
        return nn.softmax_cross_entropy(self.logits(params, batch[:, :-1]), batch[:, 1:])


def char_transformer(embed=32, heads=4, blocks=2, seq_len=32, batch_size=32, init_scale=1.0,
                     name="char_transformer") -> CharTransformerTask:
    for what, n in (("embed", embed), ("heads", heads), ("blocks", blocks), ("seq_len", seq_len),
                    ("batch_size", batch_size)):
        if not (isinstance(n, int) and n >= 1):
            raise ValueError(f"char_transformer: {what} must be a positive int, got {n!r}")
    if embed % heads:
        raise ValueError(f"char_transformer: embed={embed} must be a multiple of heads={heads} "
                         "(each head gets embed // heads features)")
    return CharTransformerTask(jnp.asarray(init_scale, jnp.float32), embed, heads, blocks, seq_len, batch_size, name)
