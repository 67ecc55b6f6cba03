"""Meta-gradient estimators: five ways to get d(meta-loss)/dθ from inner training.

Every estimator is an object with

    state = estimator.init(theta, key)
    meta_grad, state, metrics = estimator(theta, state, key)

`meta_grad` has θ's structure and is always finite: non-finite entries are replaced
by 0 and counted in `metrics["non_finite"]`. `metrics` also holds `meta_loss` (the
mean meta-loss of this estimate's unrolls) and `grad_norm` (of the returned,
cleaned gradient). A "particle" is one inner run (backprop estimators) or one
antithetic pair (ES estimators); all per-particle arrays have the particle axis
first, so a trainer can shard it over devices.

With σ the perturbation scale, N the number of pairs, ε_i ~ N(0, σ²I) shaped like θ,
and L(θ) the meta-loss of an unroll (see `unroll.py`):

    full_grad     ∇θ mean over a whole episode, backprop through all T steps
                  (jax.checkpoint per step: memory stays flat). Exact, but its
                  variance explodes with T on chaotic meta-losses.
    truncated_grad ∇θ of one truncation's meta-loss from a carried state treated as
                  a constant. Cheap; biased towards greedy, short-horizon behaviour.
    es            ĝ = 1/(2σ²N) Σ_i ε_i (L(θ+ε_i) − L(θ−ε_i)) over a whole episode:
                  unbiased for the gradient of the Gaussian-smoothed meta-loss.
    truncated_es  the same formula on one truncation from a shared carried state;
                  the + state moves on. Biased like truncated_grad.
    pes           each pair keeps states s⁺_i, s⁻_i and ξ_i = Σ ε since the episode
                  began: ĝ = 1/(2σ²N) Σ_i ξ_i (L⁺_i − L⁻_i). Unbiased for the whole
                  episode; its variance grows with the truncations per episode.

The + and − runs of a pair share the task, the data and every key: only θ differs.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import re
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding

from .unroll import TruncatedUnroll, tree_where

SIGNS = np.array([1.0, -1.0], np.float32)  # numpy: importing this module starts no JAX backend


def _normal_like(key, theta, sigma):
    """ε ~ N(0, σ²I) with θ's structure (float32)."""
    leaves, treedef = jax.tree.flatten(theta)
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(treedef, [sigma * jax.random.normal(k, jnp.shape(x), jnp.float32)
                                        for k, x in zip(keys, leaves)])


def _plus_minus(theta, eps):
    """θ + s·ε for s in (+1, −1), stacked on a new leading axis of size 2."""
    return jax.tree.map(lambda t, e: t + SIGNS.reshape((2,) + (1,) * jnp.ndim(t)) * e, theta, eps)


def clean(grad):
    """(grad with non-finite entries set to 0, how many there were, its global norm)."""
    bad = sum(jnp.sum(~jnp.isfinite(g)) for g in jax.tree.leaves(grad))
    grad = jax.tree.map(lambda g: jnp.where(jnp.isfinite(g), g, 0.0), grad)
    return grad, bad.astype(jnp.int32), jnp.sqrt(sum(jnp.sum(jnp.square(g)) for g in jax.tree.leaves(grad)))


def _metrics(grad, meta_loss, losses):
    grad, bad, norm = clean(grad)
    metrics = {"meta_loss": jnp.mean(meta_loss), "non_finite": bad, "grad_norm": norm,
               "non_finite_losses": jnp.sum(~jnp.isfinite(losses)).astype(jnp.int32)}
    return grad, metrics


def settings(obj, depth: int = 0):
    """Every setting of `obj` as JSON-ready data: a learned optimizer's or a task
    family's class and public attributes (its constructor arguments), recursively.
    Two objects with the same settings behave the same, so a checkpoint that records
    them can refuse a resume under any other. A large array is recorded by its shape,
    dtype and a hash of its bytes."""
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if callable(obj) and hasattr(obj, "__qualname__"):  # a function: its name, not its address
        return f"{getattr(obj, '__module__', '')}.{obj.__qualname__}"
    if depth > 8:
        return re.sub(r" at 0x[0-9a-f]+", "", repr(obj))
    if isinstance(obj, (np.generic, np.ndarray, jax.Array)):
        a = np.asarray(obj)
        if a.size <= 16:
            return a.tolist()
        return {"shape": list(a.shape), "dtype": str(a.dtype), "sha256": hashlib.sha256(a.tobytes()).hexdigest()}
    if isinstance(obj, (tuple, list)):
        return [settings(x, depth + 1) for x in obj]
    if isinstance(obj, dict):
        return {str(k): settings(v, depth + 1) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if dataclasses.is_dataclass(obj):
        fields = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    elif hasattr(obj, "__dict__"):
        fields = {k: v for k, v in vars(obj).items() if not k.startswith("_")}
    else:
        return re.sub(r" at 0x[0-9a-f]+", "", repr(obj))  # the same in every process
    return {"class": type(obj).__name__, **{k: settings(v, depth + 1) for k, v in sorted(fields.items())}}


class Estimator:
    """Shared plumbing. Subclasses implement `init(theta, key)` and `__call__`.

    `sharding` (set by the trainer through `with_sharding`) places the particle axis
    of per-particle arrays on a device mesh; None leaves placement to JAX."""

    name = "estimator"
    sharding: NamedSharding | None = None

    def __init__(self, unroll: TruncatedUnroll, num_particles: int):
        if not (isinstance(num_particles, int) and num_particles >= 1):
            raise ValueError(f"{type(self).__name__}: the number of particles must be a positive int, "
                             f"got {num_particles!r}")
        self.unroll, self.num_particles = unroll, num_particles

    def with_sharding(self, sharding: NamedSharding | None) -> "Estimator":
        """A copy that shards its particle axis with `sharding` (a NamedSharding whose
        spec names the leading axis)."""
        new = copy.copy(self)
        new.sharding = sharding
        return new

    def _shard(self, tree):
        if self.sharding is None:
            return tree
        return jax.tree.map(lambda x: jax.lax.with_sharding_constraint(x, self.sharding), tree)

    def _particle_keys(self, key):
        return self._shard(jax.random.split(key, self.num_particles))

    def _persistent_runs(self, theta, key):
        """One fresh, persistent inner run per particle (the truncated estimators' state)."""
        return self._shard(jax.vmap(lambda k: self.unroll.init(theta, k))(self._particle_keys(key)))

    def config(self) -> dict:
        """What fixes the meaning of a meta-training run (checkpoints compare it): the
        estimator, the unroll, and every setting of the learned optimizer and family."""
        return {"estimator": self.name, "num_particles": self.num_particles, **self.unroll.config(),
                "lopt_settings": settings(self.unroll.lopt), "family_settings": settings(self.unroll.family)}

    def init(self, theta, key) -> Any:
        return ()

    def __call__(self, theta, state, key):
        raise NotImplementedError

    def __repr__(self):
        return f"{self.name}({self.num_particles} particles)"


class FullGrad(Estimator):
    """Backprop through whole episodes, one per particle (run), from fresh starts."""

    name = "full_grad"

    def __call__(self, theta, state, key):
        def one(k):
            (meta, losses), grad = jax.value_and_grad(
                lambda th: self.unroll.episode(th, k, checkpoint=True), has_aux=True)(theta)
            return grad, meta, losses

        grads, meta, losses = jax.vmap(one)(self._particle_keys(key))
        grad, metrics = _metrics(jax.tree.map(lambda g: jnp.mean(g, 0), grads), meta, losses)
        return grad, state, metrics


class TruncatedGrad(Estimator):
    """Backprop through one truncation of each persistent run; the start is a constant."""

    name = "truncated_grad"

    def init(self, theta, key):
        return self._persistent_runs(theta, key)

    def __call__(self, theta, state, key):
        def one(s):
            s = jax.lax.stop_gradient(s)

            def loss(th):
                new, out = self.unroll.unroll(th, s)
                return out.meta_loss, (new, out.loss)

            (meta, (new, losses)), grad = jax.value_and_grad(loss, has_aux=True)(theta)
            return grad, new, meta, losses

        grads, state, meta, losses = jax.vmap(one)(state)
        grad, metrics = _metrics(jax.tree.map(lambda g: jnp.mean(g, 0), grads), meta, losses)
        return grad, self._shard(state), metrics


class _Antithetic(Estimator):
    def __init__(self, unroll: TruncatedUnroll, num_pairs: int, sigma: float):
        super().__init__(unroll, num_pairs)
        try:
            sigma = float(sigma)
        except (jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError):
            pass  # a traced σ (an explorer's slider) cannot be checked; it is let through
        else:
            if not sigma > 0:
                raise ValueError(f"{type(self).__name__}: sigma must be > 0, got {sigma}")
        self.sigma = sigma

    def config(self) -> dict:
        return {**super().config(), "sigma": self.sigma}

    def _estimate(self, weights, meta_pm):
        """1/(2σ²N) Σ_i w_i (L⁺_i − L⁻_i) for per-pair weights w (ε for ES, ξ for PES)."""
        diff = meta_pm[:, 0] - meta_pm[:, 1]
        return jax.tree.map(
            lambda w: jnp.tensordot(diff, w, axes=1) / (2 * self.sigma**2 * self.num_particles), weights)


class ES(_Antithetic):
    """Antithetic ES over whole episodes: pair i runs one fresh task with θ ± ε_i."""

    name = "es"

    def __call__(self, theta, state, key):
        def pair(k):
            k_eps, k_task = jax.random.split(k)
            eps = _normal_like(k_eps, theta, self.sigma)
            meta, losses = jax.vmap(lambda th: self.unroll.episode(th, k_task))(_plus_minus(theta, eps))
            return eps, meta, losses

        eps, meta, losses = jax.vmap(pair)(self._particle_keys(key))
        grad, metrics = _metrics(self._estimate(eps, meta), meta, losses)
        return grad, state, metrics


class TruncatedES(_Antithetic):
    """Antithetic ES on one truncation from each pair's carried state; the + state moves on."""

    name = "truncated_es"

    def init(self, theta, key):
        return self._persistent_runs(theta, key)

    def __call__(self, theta, state, key):
        def pair(s, k):
            eps = _normal_like(k, theta, self.sigma)
            new, out = jax.vmap(lambda th: self.unroll.unroll(th, s))(_plus_minus(theta, eps))
            return eps, jax.tree.map(lambda x: x[0], new), out.meta_loss, out.loss

        eps, state, meta, losses = jax.vmap(pair)(state, self._particle_keys(key))
        grad, metrics = _metrics(self._estimate(eps, meta), meta, losses)
        return grad, self._shard(state), metrics


class PESState(NamedTuple):
    inner: Any   # InnerState with leading axes (pairs, 2): the + and − runs
    xi: Any      # θ-shaped, leading axis (pairs,): Σ ε since the pair's episode began


class PES(_Antithetic):
    """Persistent ES: unbiased for whole episodes at the cost of one truncation per step."""

    name = "pes"

    def init(self, theta, key):
        def pair(k):
            s = self.unroll.init(theta, k)
            return jax.tree.map(lambda x: jnp.stack([x, x]), s)  # + and − start equal

        inner = jax.vmap(pair)(self._particle_keys(key))
        xi = jax.tree.map(lambda t: jnp.zeros((self.num_particles,) + jnp.shape(t), jnp.float32), theta)
        return self._shard(PESState(inner, xi))

    def __call__(self, theta, state, key):
        def pair(s_pm, xi, k):
            eps = _normal_like(k, theta, self.sigma)
            # a new episode starts in this truncation: both states reset to one fresh start, ξ restarts
            new_episode = self.unroll.episode_over(jax.tree.map(lambda x: x[0], s_pm))
            xi = tree_where(new_episode, jax.tree.map(jnp.zeros_like, xi), xi)
            xi = jax.tree.map(jnp.add, xi, eps)
            new, out = jax.vmap(self.unroll.unroll)(_plus_minus(theta, eps), s_pm)
            return new, xi, out.meta_loss, out.loss

        inner, xi, meta, losses = jax.vmap(pair)(state.inner, state.xi, self._particle_keys(key))
        grad, metrics = _metrics(self._estimate(xi, meta), meta, losses)
        return grad, self._shard(PESState(inner, xi)), metrics


def full_grad(unroll: TruncatedUnroll, num_runs: int) -> FullGrad:
    return FullGrad(unroll, num_runs)


def truncated_grad(unroll: TruncatedUnroll, num_runs: int) -> TruncatedGrad:
    return TruncatedGrad(unroll, num_runs)


def es(unroll: TruncatedUnroll, num_pairs: int, sigma: float = 0.01) -> ES:
    return ES(unroll, num_pairs, sigma)


def truncated_es(unroll: TruncatedUnroll, num_pairs: int, sigma: float = 0.01) -> TruncatedES:
    return TruncatedES(unroll, num_pairs, sigma)


def pes(unroll: TruncatedUnroll, num_pairs: int, sigma: float = 0.01) -> PES:
    return PES(unroll, num_pairs, sigma)


def episode_estimates(estimator: Estimator, theta, keys, calls: int = 1):
    """Independent estimates of the meta-gradient, one per key, to see an estimator's
    spread: each is the mean of `calls` consecutive calls from a fresh state, i.e. over
    one whole episode (1 call for `es` and `full_grad`, T/K calls for the truncated
    estimators and `pes`). Returns θ's tree with a leading axis of len(keys): its mean
    estimates the estimator's expectation, its standard deviation the estimator's."""
    if not (isinstance(calls, int) and calls >= 1):
        raise ValueError(f"episode_estimates: calls must be a positive int (T/K for a truncated estimator), "
                         f"got {calls!r}")

    def body(states, i):
        step_keys = jax.vmap(lambda k: jax.random.fold_in(k, i))(keys)
        grad, states, _ = jax.vmap(estimator, in_axes=(None, 0, 0))(theta, states, step_keys)
        return states, grad

    states = jax.vmap(estimator.init, in_axes=(None, 0))(theta, keys)
    grads = jax.lax.scan(body, states, jnp.arange(calls))[1]
    return jax.tree.map(lambda g: g.mean(0), grads)


ESTIMATORS = {"full_grad": full_grad, "truncated_grad": truncated_grad, "es": es, "truncated_es": truncated_es,
              "pes": pes}


def make(name: str, unroll: TruncatedUnroll, num_particles: int, sigma: float = 0.01) -> Estimator:
    """The estimator called `name` (one of ESTIMATORS)."""
    if name not in ESTIMATORS:
        raise ValueError(f"unknown estimator {name!r}; choose one of {sorted(ESTIMATORS)}")
    if name in ("full_grad", "truncated_grad"):
        return ESTIMATORS[name](unroll, num_particles)
    return ESTIMATORS[name](unroll, num_particles, sigma)
