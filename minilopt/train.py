"""The inner training loop: `fit` and the learning-rate sweep that tunes Adam.

`fit` runs all steps as one `lax.scan` under `jit`:

    loss_t, g_t = value_and_grad(task.loss)(params_t, batch_t)
    updates, state = optimizer.update(g_t, state, params_t, value=loss_t)
    params_{t+1} = params_t + updates

Any optax `GradientTransformation` works; it is wrapped so it accepts `value=`.

Non-finite values stop the run cleanly: from the first step whose loss, or whose
updated parameters, are not finite, the parameters are frozen at their last finite
value and the remaining losses are NaN. `FitResult.stopped_at` says which step.

`lr_sweep` vmaps the same loop over learning rates, with the same initial
parameters and batches for every rate, and picks the rate with the lowest final
training loss. That is the "LR-tuned Adam" baseline of the whole course.
"""
from __future__ import annotations

import math
import warnings
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from .tasks import Task


class FitResult(NamedTuple):
    """The outcome of `fit`. Losses are numpy arrays; `params` are the final (finite) ones."""
    train_loss: np.ndarray   # (steps,); NaN from stopped_at + 1 on
    eval_steps: np.ndarray   # steps at which the eval loss was measured (0 = before training)
    eval_loss: np.ndarray
    params: Any
    stopped_at: int | None   # first step with a non-finite loss or update, or None

    @property
    def curve(self) -> np.ndarray:
        """The training curve up to the stop (all of it if the run never stopped)."""
        return self.train_loss if self.stopped_at is None else self.train_loss[: self.stopped_at + 1]


class SweepResult(NamedTuple):
    learning_rates: np.ndarray
    train_loss: np.ndarray    # (n_rates, steps)
    eval_steps: np.ndarray
    eval_loss: np.ndarray     # (n_rates, n_evals)
    final_loss: np.ndarray    # (n_rates,) mean train loss over the last 10% of steps; inf if stopped
    stopped_at: np.ndarray    # (n_rates,) -1 where the run never stopped
    best_index: int
    best_lr: float

    @property
    def runs(self) -> int:
        """How many training runs the tuning took."""
        return len(self.learning_rates)


def check_params(params) -> None:
    """Raise a ValueError naming any parameter leaf that is not floating point."""
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        if not jnp.issubdtype(jnp.result_type(leaf), jnp.floating):
            raise ValueError(
                f"parameter {jax.tree_util.keystr(path) or '(root)'} has dtype {jnp.result_type(leaf)}; "
                "optimizers need floating-point parameters: cast it with .astype(jnp.float32), "
                "or keep integer data out of the parameter tree")


def _check_updates(updates, params):
    if jax.tree.structure(updates) != jax.tree.structure(params):
        raise ValueError(
            "the optimizer returned updates whose structure differs from the parameters':\n"
            f"  parameters: {jax.tree.structure(params)}\n  updates:    {jax.tree.structure(updates)}\n"
            "an optax update must return one update per parameter leaf, in the same tree")


def _all_finite(tree):
    return jnp.all(jnp.array([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def _is_int(x) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def _eval_schedule(steps: int, eval_every: int | None) -> list[int]:
    if not (_is_int(steps) and steps >= 1):
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    if eval_every is not None and not (_is_int(eval_every) and eval_every >= 1):
        raise ValueError(f"eval_every must be an int >= 1 (or None: every steps // 10), got {eval_every!r}")
    every = eval_every or max(1, steps // 10)
    return [min(every, steps - s) for s in range(0, steps, every)]  # chunk lengths


def make_run(task: Task, optimizer, steps: int, eval_every: int | None = None) -> Callable:
    """A pure function `run(key, params) -> (train_loss, eval_loss, params, stopped_at)`;
    jit it, or vmap it over keys or over anything the optimizer closes on."""
    opt = optax.with_extra_args_support(optimizer)
    every = _eval_schedule(steps, eval_every)[0]

    def step(carry, key):
        params, state, t, stopped_at = carry
        loss, grads = jax.value_and_grad(task.loss)(params, task.batch(key))
        updates, new_state = opt.update(grads, state, params, value=loss)
        _check_updates(updates, params)
        new_params = optax.apply_updates(params, updates)
        ok = (stopped_at < 0) & jnp.isfinite(loss) & _all_finite(new_params)
        keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)
        stopped_at = jnp.where((stopped_at < 0) & ~ok, t, stopped_at)
        loss = jnp.where((stopped_at >= 0) & (stopped_at < t), jnp.nan, loss)
        return (keep(new_params, params), keep(new_state, state), t + 1, stopped_at), loss

    def evaluate(params, key):
        return task.loss(params, task.eval_batch(key))

    def run(key, params):
        k_eval, k_steps = jax.random.split(key)

        def chunk(carry, keys):  # len(keys) steps, then one eval (same eval key every time)
            carry, losses = jax.lax.scan(step, carry, keys)
            return carry, (losses, jnp.where(carry[3] >= 0, jnp.nan, evaluate(carry[0], k_eval)))

        carry = (params, opt.init(params), jnp.zeros((), jnp.int32), -jnp.ones((), jnp.int32))
        step_keys = jax.random.split(k_steps, steps)
        full = steps // every * every
        # Full chunks in one nested scan, plus at most one shorter chunk: the step is
        # traced and compiled at most twice, however many evals there are.
        carry, (losses, evals) = jax.lax.scan(chunk, carry, step_keys[:full].reshape(steps // every, every, *step_keys.shape[1:]))
        losses, evals = [losses.reshape(-1)], [evaluate(params, k_eval)[None], evals]
        if full < steps:
            carry, (rest, last) = chunk(carry, step_keys[full:])
            losses.append(rest)
            evals.append(last[None])
        return jnp.concatenate(losses), jnp.concatenate(evals), carry[0], carry[3]

    return run


def _eval_steps(steps, eval_every):
    return np.cumsum([0] + _eval_schedule(steps, eval_every))


def fit(task: Task, optimizer, steps: int, key, *, params=None, eval_every: int | None = None) -> FitResult:
    """Train `task` with `optimizer` for `steps` steps (one jitted lax.scan).

    `key` seeds the initial parameters (unless `params` is given) and the batches.
    The eval loss is measured before training and every `eval_every` steps
    (default: ten times per run)."""
    k_init, k_run = jax.random.split(key)
    params = task.init(k_init) if params is None else params
    check_params(params)
    train_loss, eval_loss, params, stopped = jax.jit(make_run(task, optimizer, steps, eval_every))(k_run, params)
    stopped = int(stopped)
    if stopped >= 0:
        warnings.warn(f"{task.name}: non-finite loss or update at step {stopped}; training stopped there, "
                      "and the curve and parameters up to that step are kept", RuntimeWarning, stacklevel=2)
    return FitResult(np.asarray(train_loss), _eval_steps(steps, eval_every), np.asarray(eval_loss), params,
                     None if stopped < 0 else stopped)


def final_loss(train_loss: np.ndarray, stopped_at) -> np.ndarray:
    """Mean training loss over the last 10% of steps (minibatch noise averages out);
    inf for runs that stopped on a non-finite value."""
    train_loss = np.asarray(train_loss)
    tail = max(1, math.ceil(train_loss.shape[-1] / 10))
    final = train_loss[..., -tail:].mean(axis=-1)
    return np.where((np.asarray(stopped_at) >= 0) | ~np.isfinite(final), np.inf, final)


def lr_sweep(task: Task, make_optimizer: Callable[[Any], Any], learning_rates: Sequence[float], steps: int, key,
             *, eval_every: int | None = None) -> SweepResult:
    """Train once per learning rate, vmapped, from the same init and the same batches.

    `make_optimizer(lr)` must accept a traced scalar, as every optax optimizer does:
    `lr_sweep(task, optax.adam, np.logspace(-4, 0, 9), 500, key)`."""
    try:
        lrs = np.asarray(learning_rates, dtype=np.float32)
    except (TypeError, ValueError):
        lrs = np.zeros((0,))
    if lrs.ndim != 1 or len(lrs) < 1 or not np.all(lrs > 0) or not np.all(np.isfinite(lrs)):
        raise ValueError(f"learning_rates must be a non-empty 1-D list of finite positive numbers, "
                         f"got {learning_rates!r}")
    k_init, k_run = jax.random.split(key)
    params = task.init(k_init)
    check_params(params)
    one = lambda lr: make_run(task, make_optimizer(lr), steps, eval_every)(k_run, params)
    train_loss, eval_loss, _, stopped = jax.jit(jax.vmap(one))(jnp.asarray(lrs))
    train_loss, stopped = np.asarray(train_loss), np.asarray(stopped)
    final = final_loss(train_loss, stopped)
    best = int(np.argmin(final))
    return SweepResult(lrs, train_loss, _eval_steps(steps, eval_every), np.asarray(eval_loss), final, stopped,
                       best, float(lrs[best]))
