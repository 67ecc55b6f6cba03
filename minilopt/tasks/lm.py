"""A character-level language model: an LSTM on a small offline corpus.

    h_t = LSTM(embed(c_t), h_{t−1});   loss = mean_t −log softmax(W h_t + b)[c_{t+1}]

The corpus is the text that ships inside scikit-learn (see `data.py`). A batch is
`batch_size` random windows of `seq_len + 1` characters, cut inside jit.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from .. import nn
from . import data
from .base import Task, check_batch_shape, check_split, pytree_dataclass, static


@pytree_dataclass
class CharLMTask(Task):
    init_scale: jnp.ndarray
    embed: int = static(32)
    hidden: int = static(64)
    seq_len: int = static(32)
    batch_size: int = static(32)
    name: str = static("char_lm")

    @property
    def vocab(self) -> int:
        return len(data.VOCAB)

    def init(self, key):
        k_e, k_l, k_o = jax.random.split(key, 3)
        return {
            "embed": self.init_scale * jax.random.normal(k_e, (self.vocab, self.embed)),
            "lstm": nn.lstm_init(k_l, self.embed, self.hidden),
            "out": nn.linear_init(k_o, self.hidden, self.vocab, self.init_scale),
        }

    def batch(self, key, split: str = "train"):
        d = data.load("text")
        text = d.x_train if check_split(split, ("train", "test")) == 0 else d.x_test
        starts = jax.random.randint(key, (self.batch_size,), 0, text.shape[0] - self.seq_len - 1)
        return jax.vmap(lambda s: jax.lax.dynamic_slice(text, (s,), (self.seq_len + 1,)))(starts)

    def loss(self, params, batch):
        check_batch_shape(self.name, "the batch of character windows", batch, (self.seq_len + 1,))
        inputs, targets = batch[:, :-1], batch[:, 1:]
        x = params["embed"][inputs]                       # (B, S, E)
        zeros = jnp.zeros((batch.shape[0], self.hidden), x.dtype)

        def step(state, x_t):
            h, state = nn.lstm_cell(params["lstm"], x_t, state)
            return state, h

        _, hs = jax.lax.scan(step, (zeros, zeros), jnp.swapaxes(x, 0, 1))  # (S, B, H)
        logits = nn.linear(params["out"], jnp.swapaxes(hs, 0, 1))
        return nn.softmax_cross_entropy(logits, targets)


def char_lm(embed=32, hidden=64, seq_len=32, batch_size=32, init_scale=1.0, name="char_lm") -> CharLMTask:
    return CharLMTask(jnp.asarray(init_scale, jnp.float32), embed, hidden, seq_len, batch_size, name)
