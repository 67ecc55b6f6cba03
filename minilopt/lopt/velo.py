"""VeLO: a per-tensor LSTM hypernetwork that writes a tiny per-parameter MLP.

Metz et al. 2022, "VeLO: Training Versatile Learned Optimizers by Scaling Up". The
meta-parameters and the update follow the reference implementation (`HyperV2` in
google/learned_optimization), so the released weights load and reproduce its updates
(tests/test_velo_parity.py). One update, in order:

1. loss buffer ← loss; 9 loss features.           (features.loss_buffer_*)
2. g ← clip(g, −1000, 1000)  (NaN → 0).
3. per tensor, 30 LSTM inputs from p, OLD m and rms, the loss features and t/T.
4. the LSTM runs once over all tensors as a batch → per tensor: `controls` (P,),
   `lr_mult` and the next LSTM state.
5. accumulators ← g: momentum (0.9, 0.99, 0.999), rms (0.999,), factored.
6. per tensor, mix the P stacked MLP copies ONCE:  W ← 100 · mean_k controls[k]·W[k].
7. per parameter, the MLP 30 → 4 → 4 → 3 reads 30 normalised channels and gives
   direction d and magnitude μ:
       p ← p − lr_mult · d · exp(0.001·μ) · 0.001 · sqrt(mean(p²) + 1e-9)
   with |d · exp(0.001·μ)| clipped at 1000 (`bounded_step`: inactive for trained
   weights, it keeps an untrained θ's updates finite).
8. t ← t + 1.

The LSTM runs once per tensor; per parameter there are only the accumulators and a
tiny MLP, mixed per tensor (6), not per parameter. This file is the reference, written
as the math reads, one tensor at a time, on any backend; `velo_fast` computes the same
update in fewer passes over memory, and `VeLO` takes it on GPU. Lesson 05
(notebooks/05_inside_velo.ipynb) takes one update apart.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from .. import nn
from . import features as F
from .mlp import GRAD_CLIP, clean_gradient  # noqa: F401  (step 2: one clip for every learned optimizer)
from .velo_theta import (MLP_GROUPS, adam_like_theta, check_theta, init_theta,  # noqa: F401 (the meta-
                         theta_config, theta_shapes)                               # parameters, re-exported)

MOMENTUM_DECAYS = (0.9, 0.99, 0.999)
RMS_DECAYS = (0.999,)
FACTORED_DECAYS = (0.9, 0.99, 0.999)


# --- Per tensor: the LSTM's inputs, the LSTM, the mixing of the MLPs (steps 3, 4, 6) ---------
def cliplog(x):
    """0.5 · clip(log(1e-8 + |10·x|), −5, 5)."""
    return 0.5 * jnp.clip(jnp.log(1e-8 + jnp.abs(10.0 * x)), -5.0, 5.0)


def lstm_statistics(p, m, rms):
    """The 7 statistics of one tensor the LSTM reads, from p and the OLD m (3 arrays) and rms:

        s        = rsqrt(max(1e-9, mean(p²)))      (m and rms are scaled by s, not s²)
        mean_rms = cliplog(mean(s·rms))
        var_m    = cliplog(mean((s·m − mean(s·m))²))          per momentum (3)
        var_rms  = cliplog(mean((s·rms − mean(s·m))²))        (3): centred on the MOMENTUM mean,
                                                               a quirk of the reference kept as is
    """
    s = jax.lax.rsqrt(jnp.maximum(1e-9, jnp.mean(jnp.square(jnp.asarray(p, jnp.float32)))))
    axes = tuple(range(jnp.ndim(p)))
    m, rms = s * jnp.stack(m, axis=-1), s * rms[..., None]
    mean_m = jnp.mean(m, axis=axes)
    return jnp.concatenate([cliplog(jnp.mean(rms, axis=axes)), cliplog(jnp.mean(jnp.square(m - mean_m), axis=axes)),
                            cliplog(jnp.mean(jnp.square(rms - mean_m), axis=axes))])


def lstm_inputs(stats, shapes, loss_features, fraction_left):
    """(n_tensors, 30): fraction_left 9, loss_features 9, mean_rms 1, rank 5, var_m 3, var_rms 3
    (alphabetical by name); rank is a one-hot of the number of dimensions of size > 1."""
    ranks = jax.nn.one_hot(np.array([sum(d > 1 for d in shape) for shape in shapes]), 5, dtype=jnp.float32)
    shared = jnp.broadcast_to(jnp.concatenate([fraction_left, loss_features]), (stats.shape[0], 18))
    return jnp.concatenate([shared, stats[:, :1], ranks, stats[:, 1:]], axis=1)


def lstm_network(rnn, x, state):
    """One step of the per-tensor LSTM over all tensors as a batch.

        a = relu(linear_1(x)); v = max over tensors of a   (tensors see each other only here)
        x' = linear_2(x) + v
        h', c' = LSTM cell([x', h])                        gates i, g, f, o; +1 on f
        controls = rnn_to_controls(h')  (n, P);  lr_mult = step_size(h')  (n,), used raw

    `rnn_params/linear` exists in the weights but is unused. Products at JAX's default
    precision, as the reference's (TF32 on recent GPUs).
    """
    v = jnp.max(jax.nn.relu(nn.linear(rnn["linear_1"], x)), axis=0)
    h, (h, c) = nn.lstm_cell(rnn["rnn/linear"], nn.linear(rnn["linear_2"], x) + v, state, forget_bias=1.0)
    return nn.linear(rnn["rnn_to_controls"], h), nn.linear(rnn["step_size"], h)[:, 0], (h, c)


def mix_weights(ff_stack: dict, controls) -> dict:
    """Per tensor, collapse the P stacked MLPs into one: W ← 100·mean_k controls[k]·W[k].

    controls is (n_tensors, P); every leaf goes from (P, …) to (n_tensors, …). The 14
    first-layer blocks come back as one `w0` of shape (n_tensors, 30, 4).
    """
    P = controls.shape[-1]
    mixed = {k: jnp.tensordot(controls, w, axes=1) * (100.0 / P) for k, w in ff_stack.items()}
    if "w0__0" in mixed:
        mixed["w0"] = jnp.concatenate([mixed.pop(f"w0__{k}") for k in range(len(MLP_GROUPS))], axis=1)
    return mixed


# --- Per parameter: the accumulators, the 30 channels, the MLP and the step (steps 5, 7) ------
def accumulate(g, m, rms):
    """Step 5 for the momenta (3 arrays) and rms (the factored state: `features.factored_update`):

        m_i ← β_i·m_i + (1−β_i)·g  (β = 0.9, 0.99, 0.999);   rms ← 0.999·rms + 0.001·g²

    β and 1−β in float32, as the reference computes them (1 − 0.999 is not 0.001 there)."""
    m = tuple(b * mi + (1 - b) * g for b, mi in zip(np.float32(MOMENTUM_DECAYS), m))
    b = np.float32(RMS_DECAYS[0])
    return m, b * rms + (1 - b) * jnp.square(g)


def channels(p, g, m, rms, precond, m_factor, row_col) -> list:
    """The 30 input channels of the per-parameter MLP (14 groups, `MLP_GROUPS`):

        g, clip(g, ±0.1), p, m (3), rms, m·r (3), r, g·F (3), g·r, row_col (12), m·M (3)

    with r = rsqrt(rms + 1e-6), F = `precond` and M = `m_factor` (`factored_multipliers`),
    the UPDATED m and rms, each broadcastable to p. Without `row_col`
    (`row_col_channels`), the 18 channels that vary along both axes of a matrix."""
    r = jax.lax.rsqrt(rms + 1e-6)
    return ([g, jnp.clip(g, -0.1, 0.1), p, *m, rms, *[mi * r for mi in m], r]
            + [g * f for f in precond] + [g * r] + list(row_col) + [mi * f for mi, f in zip(m, m_factor)])


def factored_multipliers(fac, shape, factors=None) -> tuple[list, list]:
    """Per decay, F = row_f·col_f (`features.factored_factors`, or `factors` if given), and
    M: the same F for rank ≥ 2, v_diag^(−1/2) (no epsilon) for rank < 2."""
    row_f, col_f = factors if factors is not None else F.factored_factors(fac, shape)
    precond = [row_f[..., i] * col_f[..., i] for i in range(3)]
    if F.factored_dims(shape) is None:
        return precond, [fac["v_diag"][..., i] ** -0.5 for i in range(3)]
    return precond, precond


def row_col_channels(fac, shape) -> list:
    """Channels 15–26: row (3), col (3), rsqrt(row + 1e-8) (3), rsqrt(col + 1e-8) (3). For
    rank ≥ 2, row = v_row expanded at d0 and col = v_col expanded at d1 (each constant
    along that axis); for rank < 2 both are v_diag."""
    dims = F.factored_dims(shape)
    if dims is None:
        row = col = fac["v_diag"]
    else:
        row, col = jnp.expand_dims(fac["v_row"], dims[0]), jnp.expand_dims(fac["v_col"], dims[1])
    return row_col_from([row[..., i] for i in range(3)], [col[..., i] for i in range(3)])


def row_col_from(row: list, col: list) -> list:
    return row + col + [jax.lax.rsqrt(x + 1e-8) for x in row] + [jax.lax.rsqrt(x + 1e-8) for x in col]


def mlp_channels(p, g, m, rms, fac, factors=None) -> list:
    """`channels` of one tensor from its UPDATED state (`fac`: its factored state)."""
    precond, m_factor = factored_multipliers(fac, p.shape, factors)
    return channels(p, g, m, rms, precond, m_factor, row_col_channels(fac, p.shape))


STEP_BOUND = 1e3        # the most |d · exp(0.001·μ)| can be: see `bounded_step`
MU_MAX = 80_000.0       # exp(0.001 · MU_MAX) < float32's largest number


def bounded_step(d, mu):
    """The step's shape, bounded for any finite input:

        b(d, μ) = clip(d · exp(0.001 · min(μ, MU_MAX)), −STEP_BOUND, STEP_BOUND)

    so |Δ| is at most STEP_BOUND times the nominal step, whatever the gradients. Trained
    weights make |d · exp(0.001μ)| of order 1, where b is the reference's product. An
    untrained θ can give |d| and μ in the thousands for an outlier gradient, where the
    product reaches inf; min(μ, MU_MAX) keeps exp finite, so d = 0 gives 0, not 0 · inf."""
    return jnp.clip(d * jnp.exp(0.001 * jnp.minimum(mu, MU_MAX)), -STEP_BOUND, STEP_BOUND)


def tensor_update(p, g, m, rms, fac, w, lr_mult):
    """Step 7 for one tensor: Δ, from the UPDATED state and its mixed MLP `w`.

    Each channel is normalised over the tensor, x_c ← x_c · rsqrt(1e-5 + mean(x_c²)),
    then 30 → 4 → relu → 4 → relu → 3; output 0 is d, output 1 is μ, output 2 is unused.
    The products are float32 ("highest"): they are 30-long sums per parameter.
    """
    x = jnp.stack([jnp.broadcast_to(c, p.shape) for c in mlp_channels(p, g, m, rms, fac)], axis=-1)
    x = F.second_moment_normalise(x, axis=tuple(range(p.ndim)))
    dot = functools.partial(jnp.dot, precision=jax.lax.Precision.HIGHEST)
    h = jax.nn.relu(dot(x, w["w0"]) + w["b0"])
    h = jax.nn.relu(dot(h, w["w1"]) + w["b1"])
    out = dot(h, w["w2"]) + w["b2"]
    return lr_mult * 0.001 * jnp.sqrt(jnp.mean(jnp.square(p)) + 1e-9) * bounded_step(out[..., 0], out[..., 1])


# --- The optimizer ----------------------------------------------------------------------------
class VeLOState(NamedTuple):
    """Per leaf: m, 3 momenta (decays 0.9, 0.99, 0.999), each p.shape; rms, p.shape; fac,
    {v_row, v_col} or {v_diag}, decay axis last. lstm_hidden/lstm_cell: (n_tensors, H);
    loss_buffer: features.loss_buffer_init; iteration: the step t."""
    m: Any
    rms: Any
    fac: Any
    lstm_hidden: jax.Array
    lstm_cell: jax.Array
    loss_buffer: dict
    iteration: jax.Array


def velo_init_state(theta, params, num_steps: int, legacy_loss_features: bool = False) -> VeLOState:
    """Zero accumulators, the learned initial LSTM state for every tensor, an empty
    loss buffer (horizon num_steps, or 10 in the legacy mode), t = 0."""
    F.check_params(params)
    n, init = len(jax.tree.leaves(params)), theta["lstm_init_state"]
    zeros = lambda p: jnp.zeros(jnp.shape(p), jnp.float32)  # noqa: E731
    return VeLOState(
        m=jax.tree.map(lambda p: tuple(zeros(p) for _ in MOMENTUM_DECAYS), params),
        rms=jax.tree.map(zeros, params),
        fac=jax.tree.map(lambda p: F.factored_init(p, len(FACTORED_DECAYS)), params),
        lstm_hidden=jnp.broadcast_to(init["hidden"].reshape(1, -1), (n, init["hidden"].shape[-1])),
        lstm_cell=jnp.broadcast_to(init["cell"].reshape(1, -1), (n, init["cell"].shape[-1])),
        loss_buffer=F.loss_buffer_init(10 if legacy_loss_features else num_steps),
        iteration=jnp.zeros((), jnp.int32))


def velo_step(theta, state: VeLOState, grads, params, loss, num_steps: int,
              carry_lstm_state: bool = True, debug: bool = False):
    """One VeLO update (steps 1–8) as a pure function: returns (updates, new_state[, debug]).

    `updates = −Δ` per leaf, in the parameter's dtype (add them to the params).
    With `debug=True` also returns the step's intermediates: rnn_inputs, loss_features,
    fraction_trained, control_params, lr_mult, clipped_grads and fac_g.
    """
    treedef = jax.tree.structure(params)
    dtypes = [jnp.result_type(p) for p in treedef.flatten_up_to(params)]
    ps = [jnp.asarray(p, jnp.float32) for p in treedef.flatten_up_to(params)]
    gs = [clean_gradient(g) for g in treedef.flatten_up_to(grads)]                       # 2
    ms, rmss, facs = (treedef.flatten_up_to(x) for x in (state.m, state.rms, state.fac))
    buffer = F.loss_buffer_update(state.loss_buffer, loss)                               # 1
    loss_features = F.loss_buffer_features(buffer)
    stats = jnp.stack([lstm_statistics(p, m, rms) for p, m, rms in zip(ps, ms, rmss)])  # 3
    x = lstm_inputs(stats, [p.shape for p in ps], loss_features, F.fraction_embedding(state.iteration, num_steps))
    controls, lr_mult, (h, c) = lstm_network(theta["rnn_params"], x, (state.lstm_hidden, state.lstm_cell))  # 4
    if not carry_lstm_state:  # legacy: the state never leaves its initial value
        h, c = state.lstm_hidden, state.lstm_cell
    ms, rmss = zip(*[accumulate(g, m, rms) for g, m, rms in zip(gs, ms, rmss)])          # 5
    facs = [F.factored_update(f, g, FACTORED_DECAYS) for f, g in zip(facs, gs)]
    mixed = mix_weights(theta["ff_mod_stack"]["~"], controls)                            # 6
    updates = [-tensor_update(*args, {k: v[i] for k, v in mixed.items()}, lr_mult[i]).astype(dtype)  # 7
               for i, (args, dtype) in enumerate(zip(zip(ps, gs, ms, rmss, facs), dtypes))]
    new_state = VeLOState(m=treedef.unflatten(ms), rms=treedef.unflatten(rmss), fac=treedef.unflatten(facs),
                          lstm_hidden=h, lstm_cell=c, loss_buffer=buffer, iteration=state.iteration + 1)  # 8
    if not debug:
        return treedef.unflatten(updates), new_state
    info = debug_info(x, loss_features, state, num_steps, controls, lr_mult, treedef, gs, facs)
    return treedef.unflatten(updates), new_state, info


def debug_info(x, loss_features, state, num_steps, controls, lr_mult, treedef, gs, facs) -> dict:
    """`velo_step(debug=True)`'s intermediates, named as the reference's."""
    return {"rnn_inputs": x, "loss_features": loss_features,
            "fraction_trained": state.iteration.astype(jnp.float32) / jnp.float32(num_steps),
            "control_params": controls, "lr_mult": lr_mult, "clipped_grads": treedef.unflatten(gs),
            "fac_g": treedef.unflatten([F.factored_precondition(f, g) for f, g in zip(facs, gs)])}


@dataclasses.dataclass(frozen=True)
class VeLO:
    """VeLO with LSTM width `hidden` (H) and `mixtures` (P) stacked MLPs; the released
    weights use H=512, P=256. `legacy_loss_features=True` is the "bugged" loss buffer
    (horizon 10 for every run length); `carry_lstm_state=False` never carries the LSTM
    state forward. `fast` picks the code, not the math: `velo_fast` (True), this file
    (False), or None: fast on GPU. Not a field, so checkpoints' settings omit it.

        velo = VeLO(hidden=32, mixtures=16)
        theta = velo.init(key)
        opt = velo.optimizer(theta, num_steps=1000)   # an optax transformation
        updates, state = opt.update(grads, state, params, value=loss)
    """
    hidden: int = 512
    mixtures: int = 256
    legacy_loss_features: bool = False
    carry_lstm_state: bool = True
    start: str = "random"      # what `init` returns: "random" (init_theta) or "adam" (adam_like_theta)
    fast: dataclasses.InitVar[bool | None] = None

    def __post_init__(self, fast):
        if self.start not in ("random", "adam"):
            raise ValueError(f"VeLO(start={self.start!r}): use 'random' or 'adam'")
        if fast not in (None, True, False):
            raise ValueError(f"VeLO(fast={fast!r}): use True, False or None (fast on GPU)")
        object.__setattr__(self, "fast", fast)

    def init(self, key) -> dict:
        return (adam_like_theta if self.start == "adam" else init_theta)(key, self.hidden, self.mixtures)

    def optimizer(self, theta, num_steps: int) -> optax.GradientTransformationExtraArgs:
        return velo_optimizer(theta, num_steps, self.legacy_loss_features, self.carry_lstm_state,
                              expected=(self.hidden, self.mixtures), fast=self.fast)


def velo_optimizer(theta, num_steps: int, legacy_loss_features: bool = False, carry_lstm_state: bool = True,
                   expected: tuple | None = None, fast: bool | None = None) -> optax.GradientTransformationExtraArgs:
    """VeLO as an optax transformation; `update(grads, state, params, value=loss)`.
    `fast`: see `VeLO`; both paths compute the same update (tests/test_velo_fast.py)."""
    if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)) or num_steps <= 0:
        raise ValueError(f"num_steps must be a positive int (the training horizon T), got {num_steps!r}")
    num_steps = int(num_steps)
    check_theta(theta, *(expected or theta_config(theta)))
    step = velo_step
    if fast or (fast is None and jax.default_backend() == "gpu"):
        from .velo_fast import velo_step as step  # imported here: velo_fast imports this module

    def init_fn(params):
        return velo_init_state(theta, params, num_steps, legacy_loss_features)

    def update_fn(updates, state, params=None, *, value=None, **extra_args):
        del extra_args
        if params is None:
            raise ValueError("VeLO needs the parameters: call update(grads, state, params, value=loss)")
        if value is None:
            raise ValueError("VeLO needs the training loss: call update(grads, state, params, value=loss) "
                             "(minilopt.train.fit passes it for you)")
        real = lambda v: any(jnp.issubdtype(jnp.result_type(v), k) for k in (jnp.floating, jnp.integer))  # noqa: E731
        if isinstance(value, (str, bytes)) or jnp.shape(value) != () or not real(value):
            raise ValueError(f"VeLO's value= must be the training loss as a real scalar, got {value!r}; "
                             "pass the loss your task computed, e.g. value=loss")
        F.check_params(params)
        return step(theta, state, updates, params, value, num_steps, carry_lstm_state)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


@functools.partial(jax.jit, static_argnames=("n", "num_steps"))
def update_surface(theta, fraction, log10_rms, span=1.0, n: int = 41, num_steps: int = 100):
    """The learned update −Δ on an n×n grid of gradients g_j and momenta m_i (the same for all
    three decays), both linspace(−span, span, n): one (n, n) tensor of parameters 0.1, second
    moments 10**log10_rms, at step t = fraction·T. Returns (g, m, update, lr_mult)."""
    g, level, params = jnp.linspace(-span, span, n), 10.0 ** log10_rms, {"w": jnp.full((n, n), 0.1, jnp.float32)}
    G, M = jnp.meshgrid(g, g)
    state = velo_init_state(theta, params, num_steps)._replace(
        m={"w": (M, M, M)}, rms={"w": jnp.full((n, n), level, jnp.float32)},
        fac={"w": {"v_row": jnp.full((n, 3), level), "v_col": jnp.full((n, 3), level)}},
        iteration=jnp.asarray(jnp.round(fraction * num_steps), jnp.int32))
    updates, _, info = velo_step(theta, state, {"w": G}, params, 1.0, num_steps, debug=True)
    return g, g, updates["w"], info["lr_mult"][0]
