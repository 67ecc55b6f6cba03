"""Inner training as a truncated state machine: the thing meta-training unrolls.

One inner run's state is `InnerState(task, params, opt_state, step, key, init_loss)`.
One inner step, with the optimizer `lopt.optimizer(θ, T)`:

    loss_t, g_t = value_and_grad(task.loss)(params_t, batch_t)
    params_{t+1} = params_t + update(g_t, opt_state_t, params_t, value=loss_t)

A **truncation** is K consecutive steps under `lax.scan`. When a run has taken its T
steps (`step == T`), the next truncation first **resets** it: a fresh task from the
family, fresh parameters, a fresh optimizer state, step 0.

We require T to be a multiple of K. Then every reset falls on a truncation
boundary, so a truncation never spans two tasks and the estimators stay simple
(PES resets its accumulator exactly when a truncation starts a new episode). The
reset itself is computed once per truncation, not once per step.

The **meta-loss** of a truncation is the mean of the per-step meta-losses over the
steps where `mask` is true:

    m_t = min(loss_t / loss_0, clip)     (normalise=True; loss_0 = loss at the episode's init)
    m_t = clip                           if loss_t is NaN or inf

With `log_loss=True` the per-step meta-loss is the log of that ratio instead,
max(log(min(loss_t / loss_0, clip)), LOG_FLOOR). A ratio weighs the early, large
losses most: an optimizer that falls fast and then stalls scores well. The log
weighs every decade of progress the same, so the end of training, where tuned Adam
keeps going down, counts as much as the start.

`mask` is false on the first step of an episode: that loss is measured on freshly
initialised parameters, before any update, so θ cannot change it.

Runs are **staggered**: `init` starts run i at step `K·o_i`, o_i uniform in
[0, T/K), so the runs are at different phases of training and successive
meta-gradients are less correlated. (A run's first, shortened episode starts from
fresh parameters at step K·o_i; from its first reset on it is an ordinary episode.)

Every function here handles ONE run; estimators `vmap` them over runs.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ..tasks import Task, TaskFamily


LOG_FLOOR = -18.0   # log(1.5e-8): losses below this fraction of the first count the same


class InnerState(NamedTuple):
    task: Any             # a Task (a pytree: its numbers are leaves)
    params: Any
    opt_state: Any
    step: jax.Array       # int32, steps taken in this episode
    key: jax.Array        # this run's PRNG key: the same for a run's + and − copies
    init_loss: jax.Array  # loss at the episode's initial parameters (the normaliser)


class TruncationOutput(NamedTuple):
    loss: jax.Array       # (K,) raw training losses
    mask: jax.Array       # (K,) false on the first step of an episode
    meta_loss: jax.Array  # scalar: masked mean of the normalised, clipped losses


class FixedFamily(TaskFamily):
    """A "family" of one task: every sample is `task` (params still vary with the key)."""

    def __init__(self, task: Task):
        self.task, self.name = task, f"fixed_{task.name}"

    def sample(self, key, split: str = "train") -> Task:
        return self.task


def tree_where(cond, a, b):
    """Elementwise `a if cond else b` over two trees of the same structure."""
    return jax.tree.map(lambda x, y: jnp.where(cond, x, y), a, b)


def _shapes(tree):
    return jax.tree.map(lambda x: (tuple(x.shape), str(x.dtype)), tree)


def check_family(family: TaskFamily, split: str = "train") -> None:
    """A ValueError unless `family.sample` can run inside jit/vmap with fixed shapes.

    Runs are vmapped, and a reset samples a task inside the vmapped code, so every
    task of the family must have the same parameter and batch shapes."""
    key = jax.random.PRNGKey(0)

    def shapes_of(k):
        task = family.sample(k, split)
        return task, task.init(k), task.batch(k)

    try:
        traced = jax.eval_shape(shapes_of, key)
    except (ValueError, TypeError, jax.errors.ConcretizationTypeError, jax.errors.TracerBoolConversionError) as e:
        raise ValueError(
            f"task family {family.name!r} cannot be sampled inside jit/vmap, which meta-training needs "
            f"(a reset samples a new task inside the vmapped unroll): {e}\n"
            "If its tasks change shape from one sample to the next (as RandomFamily's do), meta-train on one "
            "fixed-shape sub-family at a time: family.structure(key) returns one.") from None
    for seed in (1, 2):  # concrete samples must agree with the traced shapes
        concrete = jax.eval_shape(lambda: shapes_of(jax.random.PRNGKey(seed)))
        if jax.tree.structure(concrete) != jax.tree.structure(traced) or _shapes(concrete) != _shapes(traced):
            raise ValueError(
                f"task family {family.name!r} samples tasks of different shapes (seed {seed}: "
                f"{_shapes(concrete[1])} vs {_shapes(traced[1])}); runs are vmapped, so all tasks must share "
                "their shapes: sample a fixed-shape sub-family (e.g. RandomFamily.structure(key)) instead")


class TruncatedUnroll:
    """Truncated inner training of tasks from `family` with `lopt.optimizer(θ, horizon)`.

    horizon:    T, the length of one inner training run (an episode)
    truncation: K, the steps per truncation; T must be a multiple of K
    normalise:  divide each loss by the loss at the episode's initialisation
    clip:       upper bound of a per-step meta-loss (NaN counts as `clip`)
    stagger:    start runs at random whole-truncation offsets (see the module doc)
    split:      which split of the family to sample ("train" or "heldout")
    log_loss:   the per-step meta-loss is the log of the (normalised, clipped) loss
    """

    def __init__(self, lopt, family: TaskFamily | Task, horizon: int, truncation: int, *, normalise: bool = True,
                 clip: float = 2.0, stagger: bool = True, split: str = "train", log_loss: bool = False):
        if isinstance(family, Task):
            family = FixedFamily(family)
        if not (isinstance(horizon, (int, np.integer)) and isinstance(truncation, (int, np.integer))
                and horizon > 0 and truncation > 0):
            raise ValueError(f"horizon and truncation must be positive integers, got {horizon!r} and {truncation!r}")
        if horizon % truncation:
            lo, hi = (horizon // truncation) * truncation, -(-horizon // truncation) * truncation
            divisors = [k for k in range(1, min(horizon, 4 * truncation) + 1) if horizon % k == 0]
            near = min(divisors, key=lambda k: abs(k - truncation))
            raise ValueError(
                f"horizon {horizon} is not a multiple of truncation {truncation}: resets must fall on truncation "
                f"boundaries. Use horizon {f'{lo} or {hi}' if lo else hi}, or truncation {near}.")
        if not clip > 0:
            raise ValueError(f"clip must be > 0, got {clip}")
        check_family(family, split)
        self.lopt, self.family, self.horizon, self.truncation = lopt, family, int(horizon), int(truncation)
        self.normalise, self.clip, self.stagger, self.split = normalise, float(clip), stagger, split
        self.log_loss = bool(log_loss)

    @property
    def truncations_per_episode(self) -> int:
        return self.horizon // self.truncation

    def config(self) -> dict:
        """What fixes the meaning of a meta-training run (checkpoints compare it)."""
        return {"lopt": repr(self.lopt), "family": self.family.name, "horizon": self.horizon,
                "truncation": self.truncation, "normalise": self.normalise, "clip": self.clip,
                "stagger": self.stagger, "split": self.split, "log_loss": self.log_loss}

    def optimizer(self, theta):
        return self.lopt.optimizer(theta, self.horizon)

    def fresh(self, theta, key, step=0) -> InnerState:
        """A new episode: a task sampled from the family, its initial params and opt state."""
        k_task, k_init, k_batch, k_run = jax.random.split(key, 4)
        task = self.family.sample(k_task, self.split)
        params = task.init(k_init)
        init_loss = task.loss(params, task.batch(k_batch))
        return InnerState(task, params, self.optimizer(theta).init(params), jnp.asarray(step, jnp.int32), k_run,
                          init_loss)

    def init(self, theta, key) -> InnerState:
        """One run's initial state; staggered by a random whole number of truncations."""
        k_offset, k_fresh = jax.random.split(key)
        offset = jax.random.randint(k_offset, (), 0, self.truncations_per_episode) if self.stagger else 0
        return self.fresh(theta, k_fresh, offset * self.truncation)

    def episode_over(self, state: InnerState) -> jax.Array:
        """True where the next truncation starts a new episode (a reset)."""
        return state.step >= self.horizon

    def meta_losses(self, loss, init_loss):
        m = loss / init_loss if self.normalise else loss
        m = jnp.where(jnp.isfinite(m), jnp.minimum(m, self.clip), self.clip)
        return jnp.maximum(jnp.log(jnp.maximum(m, 1e-30)), LOG_FLOOR) if self.log_loss else m

    def inner_step(self, theta, state: InnerState):
        """One training step of one run: (new state, raw loss, mask)."""
        opt = self.optimizer(theta)
        key, k_batch = jax.random.split(state.key)
        task = state.task
        loss, grads = jax.value_and_grad(task.loss)(state.params, task.batch(k_batch))
        updates, opt_state = opt.update(grads, state.opt_state, state.params, value=loss)
        params = optax.apply_updates(state.params, updates)
        new = state._replace(params=params, opt_state=opt_state, step=state.step + 1, key=key)
        return new, (loss, state.step > 0)

    def unroll(self, theta, state: InnerState, *, checkpoint: bool = False):
        """One truncation of one run: (new state, TruncationOutput). Resets first if the
        episode is over. `checkpoint=True` rematerialises each step on the backward pass."""
        key, k_reset = jax.random.split(state.key)
        state = state._replace(key=key)
        state = tree_where(self.episode_over(state), self.fresh(theta, k_reset), state)
        step = lambda s, _: self.inner_step(theta, s)
        if checkpoint:
            step = jax.checkpoint(step)
        state, (loss, mask) = jax.lax.scan(step, state, None, length=self.truncation)
        meta = self.meta_losses(loss, state.init_loss)
        meta_loss = jnp.sum(jnp.where(mask, meta, 0.0)) / jnp.maximum(jnp.sum(mask), 1)
        return state, TruncationOutput(loss, mask, meta_loss)

    def episode(self, theta, key, *, checkpoint: bool = False):
        """A whole episode from a fresh start: (mean of its truncations' meta-losses, losses (T,)).
        The state is reset at step 0 (no stagger), and T/K truncations run under a scan."""
        state = self.fresh(theta, key)

        def one(s, _):
            s, out = self.unroll(theta, s, checkpoint=checkpoint)
            return s, (out.meta_loss, out.loss)

        _, (meta, loss) = jax.lax.scan(one, state, None, length=self.truncations_per_episode)
        return jnp.mean(meta), loss.reshape(-1)
