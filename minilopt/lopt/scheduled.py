"""A learned schedule over Adam plus a learned per-parameter correction.

Three ideas from the small-compute literature, in one optimizer:

- a **nominal descent term** (Harrison et al. 2022): the learned part is added to
  Adam's direction, so the optimizer starts as, and stays near, a stable method;
- a **learned global schedule** (Celo, Moudgil et al. 2025): a tiny MLP reads
  where training is (t/T) and how the loss is moving, and writes one log step size
  for the whole network at every step;
- a **per-parameter MLP** (as `MLPLOpt`) that reads each parameter's normalised
  gradient, momentum and second-moment channels and writes a correction to
  Adam's direction.

One update, for a tensor with gradient g (all tensors share the schedule):

    m ← 0.9·m + 0.1·g,  v ← 0.999·v + 0.001·g²                   (and 3 more momenta)
    a     = m̂ / (sqrt(v̂) + ε)                                   Adam's direction, bias-corrected
    u     = MLP_θ(normalised channels of g, p, m, v ; t/T)       per parameter
    s     = SCHED_θ(t/T ; log-loss trend ; log gradient-norm trend)   one scalar
    Δ     = exp(log_lr + s) · (a + u)                            p ← p − Δ

`init` gives u = 0 and s = 0 (the last layers are zero) and log_lr = log(lr):
meta-training starts from Adam at a constant rate, and every change it makes is a
learned schedule or a learned correction. The scheduler's inputs are scale free:

    ℓ_t = log(loss_t) − log(loss_0)      the log loss relative to the first one
    EMA_0.9(ℓ)                           the same, averaged over the last ~10 steps
    trend = EMA_0.9(ℓ) − EMA_0.99(ℓ)     < 0 while the loss falls
    γ_t = log‖g_t‖ − log‖g_0‖            the same for the global gradient norm

each clipped to [−CLIP, CLIP]. The loss is read from `value=`; without it the
loss features are zero (and the schedule depends on t/T and the gradients only).
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import optax

from .. import nn
from . import features
from .mlp import MLPLOpt, check_num_steps, clean_gradient, require_params

FEATURE_CLIP = 10.0
LOSS_DECAYS = (0.9, 0.99)


class ScheduledLOptState(NamedTuple):
    count: jax.Array      # t, the number of updates so far (int32)
    momentum: object      # tree of float32, p.shape + (len(momentum_decays),)
    rms: object           # tree of float32, p.shape + (1,)
    first: jax.Array      # (2,): log loss and log gradient norm at the first step
    trends: jax.Array     # (2, len(LOSS_DECAYS)): EMAs of the relative log loss and log gradient norm


def _global_norm(tree):
    return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree)))


class ScheduledLOpt(MLPLOpt):
    """Adam's direction plus a learned correction, times a learned global schedule.

        lopt  = ScheduledLOpt()
        theta = lopt.init(key)                      # starts as Adam(lr)
        opt   = lopt.optimizer(theta, num_steps=T)  # update(g, state, params, value=loss)

    Arguments (hidden, momentum_decays, fractions, eps, rms_eps as in `MLPLOpt`):
        lr: the rate of the Adam it starts as (log_lr is a meta-parameter).
        schedule_hidden: the width of the scheduler's hidden layer.
        b1, b2, adam_eps: Adam's constants for the nominal direction; b1 must be
            one of momentum_decays and b2 is the rms decay.
    """

    def __init__(self, hidden: Sequence[int] = (32,), schedule_hidden: int = 16, lr: float = 1e-3,
                 b1: float = 0.9, b2: float = 0.999, adam_eps: float = 1e-8,
                 momentum_decays: Sequence[float] = (0.5, 0.9, 0.99, 0.999),
                 fractions: Sequence[float] = (0.1, 0.3, 0.5, 0.7, 0.9), eps: float = 1e-5, rms_eps: float = 1e-8):
        super().__init__(hidden=hidden, momentum_decays=momentum_decays, rms_decay=b2, fractions=fractions,
                         eps=eps, rms_eps=rms_eps)
        if b1 not in self.momentum_decays:
            raise ValueError(f"b1={b1} must be one of momentum_decays {self.momentum_decays}")
        if not (lr > 0 and schedule_hidden >= 1):
            raise ValueError(f"need lr > 0 and schedule_hidden >= 1, got lr={lr}, schedule_hidden={schedule_hidden}")
        self.schedule_hidden, self.lr = int(schedule_hidden), float(lr)
        self.b1, self.b2, self.adam_eps = float(b1), float(b2), float(adam_eps)

    @property
    def num_schedule_inputs(self) -> int:
        return len(self.fractions) + 2 * (1 + len(LOSS_DECAYS))

    def init(self, key) -> dict:
        """{"direction": the per-parameter MLP (last layer zero: u = 0),
            "schedule": the scheduler MLP (last layer zero: s = 0), "log_lr": log(lr)}."""
        k_dir, k_sched = jax.random.split(key)
        direction = nn.mlp_init(k_dir, (self.num_inputs,) + self.hidden + (1,))
        schedule = nn.mlp_init(k_sched, (self.num_schedule_inputs, self.schedule_hidden, 1))
        for layers in (direction, schedule):
            layers[-1] = jax.tree.map(jnp.zeros_like, layers[-1])
        return {"direction": {f"layer_{i}": l for i, l in enumerate(direction)},
                "schedule": {f"layer_{i}": l for i, l in enumerate(schedule)},
                "log_lr": jnp.log(jnp.asarray(self.lr, jnp.float32))}

    def schedule_inputs(self, t, num_steps, relative, trends):
        """t/T embedding, then for loss and gradient norm: the relative log value, its
        fast average and its trend."""
        trend = trends[:, 0] - trends[:, 1]
        x = jnp.concatenate([self.time_features(t, num_steps), relative, trends[:, 0], trend])
        return jnp.clip(x, -FEATURE_CLIP, FEATURE_CLIP)

    def log_step(self, theta, t, num_steps, relative, trends):
        """log_lr + s: the log of this step's global step size."""
        layers = [theta["schedule"][f"layer_{i}"] for i in range(2)]
        s = nn.mlp(layers, self.schedule_inputs(t, num_steps, relative, trends), jnp.tanh)[0]
        return theta["log_lr"] + s

    def optimizer(self, theta, num_steps: int) -> optax.GradientTransformationExtraArgs:
        """An optax transformation for a run of `num_steps`; pass the loss as `value=`."""
        check_num_steps(num_steps)
        decays, rms_decays, k = self.momentum_decays, (self.rms_decay,), self.momentum_decays.index(self.b1)
        direction = [theta["direction"][f"layer_{i}"] for i in range(len(self.hidden) + 1)]

        def init_fn(params):
            features.check_params(params)
            return ScheduledLOptState(
                count=jnp.zeros((), jnp.int32),
                momentum=jax.tree.map(lambda p: features.accumulator_init(p, len(decays)), params),
                rms=jax.tree.map(lambda p: features.accumulator_init(p, 1), params),
                first=jnp.zeros((2,), jnp.float32), trends=jnp.zeros((2, len(LOSS_DECAYS)), jnp.float32))

        def update_fn(updates, state, params=None, value=None, **extra_args):
            del extra_args
            require_params(params, "ScheduledLOpt")
            features.check_params(params)
            grads = jax.tree.map(clean_gradient, updates)
            loss = jnp.asarray(0.0 if value is None else value, jnp.float32)
            # log loss and log gradient norm (floored at 1e-30); a non-finite one reads as "no change"
            logs = jnp.stack([jnp.log(jnp.maximum(loss, 1e-30)), jnp.log(_global_norm(grads) + 1e-30)])
            first = jnp.where((state.count == 0) | ~jnp.isfinite(state.first), logs, state.first)  # first finite
            relative = jnp.clip(jnp.where(jnp.isfinite(logs - first), logs - first, 0.0), -FEATURE_CLIP, FEATURE_CLIP)
            beta = jnp.asarray(LOSS_DECAYS, jnp.float32)
            trends = jnp.where(state.count == 0, relative[:, None], beta * state.trends + (1 - beta) * relative[:, None])
            t = state.count + 1
            step_size = jnp.exp(self.log_step(theta, state.count, num_steps, relative, trends))
            time = self.time_features(state.count, num_steps)
            c1, c2 = 1 - self.b1 ** t.astype(jnp.float32), 1 - self.b2 ** t.astype(jnp.float32)

            def one_tensor(g, p, m, v):
                m = features.momentum_update(m, g, decays)
                v = features.rms_update(v, g, rms_decays)
                adam = (m[..., k] / c1) / (jnp.sqrt(v[..., 0] / c2) + self.adam_eps)
                x = self.normalise(self.parameter_channels(g, p, m, v))
                x = jnp.concatenate([x, jnp.broadcast_to(time, x.shape[:-1] + time.shape)], axis=-1)
                u = nn.mlp(direction, x, jax.nn.relu)[..., 0]
                return (-step_size * (adam + u)).astype(jnp.result_type(p)), m, v

            treedef = jax.tree.structure(updates)
            out = [one_tensor(*leaves) for leaves in zip(
                treedef.flatten_up_to(grads), treedef.flatten_up_to(params),
                treedef.flatten_up_to(state.momentum), treedef.flatten_up_to(state.rms))]
            new_updates, m, v = (treedef.unflatten([leaf[i] for leaf in out]) for i in range(3))
            return new_updates, ScheduledLOptState(t, m, v, first, trends)

        return optax.GradientTransformationExtraArgs(init_fn, update_fn)

    def __repr__(self):
        return (f"ScheduledLOpt(hidden={self.hidden}, schedule_hidden={self.schedule_hidden}, lr={self.lr}, "
                f"b1={self.b1}, b2={self.b2}, adam_eps={self.adam_eps}, momentum_decays={self.momentum_decays}, "
                f"fractions={self.fractions}, eps={self.eps}, rms_eps={self.rms_eps})")
