"""minilopt.probe against optimizers whose answers are known in closed form.

- impulse: SGD with momentum β answers a spike with r_t = η β^t: τ = (1 − β^n)/(1 − β) over n steps;
  plain SGD has τ = 1;
- gradient_scale: SGD's step grows as η·s (slope 1); Adam's is η whatever s (scale invariant);
  clip(c) then SGD is η·min(s, c), so it saturates at s = c;
- schedule: SGD with a cosine schedule traces η_t = η (1 + cos(π t/T)) / 2 exactly;
- loss_trend: an optimizer that ignores the loss gives the same step for every trend;
  reduce_on_plateau cuts the step for a flat loss and keeps it for a falling one;
- bad input: an optimizer that needs value= gets a synthetic loss, with a note and a warning.
"""
import numpy as np
import optax
import pytest

from minilopt import probe

LR = 0.1


@pytest.mark.parametrize("beta", [0.6, 0.9])
def test_impulse_of_momentum_is_geometric_with_time_scale_one_over_one_minus_beta(beta):
    steps = 60
    out = probe.impulse(optax.sgd(LR, momentum=beta), steps=steps, trials=2)
    np.testing.assert_allclose(out.response, LR * beta ** np.arange(steps), rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(out.time_scale, (1 - beta**steps) / (1 - beta), rtol=1e-4)
    assert out.half_life == int(np.ceil(np.log(0.5) / np.log(beta))) and out.note == ""


def test_impulse_of_plain_sgd_has_time_scale_one():
    out = probe.impulse(optax.sgd(LR), steps=20, trials=1)
    np.testing.assert_allclose(out.time_scale, 1.0, rtol=1e-6)
    assert out.half_life == 1


def test_gradient_scale_sgd_is_linear_and_never_saturates():
    out = probe.gradient_scale(optax.sgd(LR), steps=3)
    np.testing.assert_allclose(out.step, LR * out.scales, rtol=1e-5)
    np.testing.assert_allclose(out.slope, 1.0, atol=1e-4)
    assert np.isnan(out.saturates_at) and out.invariance > 1e11


def test_gradient_scale_adam_is_invariant():
    out = probe.gradient_scale(optax.adam(1e-3))
    # m̂/(√v̂ + ε) = s/(s + 1e-8) for a constant gradient: within 1% of 1 from s = 1e-6 on
    np.testing.assert_allclose(out.step, 1e-3 * out.scales / (out.scales + 1e-8), rtol=1e-4)
    assert out.invariance < 1.011 and out.saturates_at == pytest.approx(1e-6)


@pytest.mark.parametrize("clip", [1e-2, 1.0, 100.0])
def test_gradient_scale_finds_the_clipping_threshold(clip):
    scales = np.logspace(-6, 6, 49)             # a quarter decade apart
    out = probe.gradient_scale(optax.chain(optax.clip(clip), optax.sgd(LR)), scales=scales, steps=1)
    np.testing.assert_allclose(out.step, LR * np.minimum(out.scales, clip), rtol=1e-5)
    # saturated within 10% of η·c: from the first scale above c / 1.1
    assert out.saturates_at == pytest.approx(scales[scales >= clip / 1.1][0])


def test_schedule_traces_a_cosine_decay():
    T = 200
    out = probe.schedule(optax.sgd(optax.cosine_decay_schedule(LR, T)), T, trials=2)
    t = np.arange(T)
    np.testing.assert_allclose(out.step, LR * (1 + np.cos(np.pi * t / T)) / 2, rtol=1e-4, atol=1e-7)
    assert out.peak_fraction < 0.1 and out.end_to_peak < 0.05 and out.start_to_peak == pytest.approx(1.0)


def test_schedule_finds_a_warmup_and_a_constant_rate():
    T = 200
    warm = optax.linear_schedule(0.0, LR, transition_steps=T // 2)
    out = probe.schedule(optax.sgd(warm), T, trials=1)
    assert out.start_to_peak < 0.2 and out.peak_fraction > 0.45 and out.end_to_peak == pytest.approx(1.0)
    flat = probe.schedule(optax.sgd(LR), T, trials=1)
    np.testing.assert_allclose(flat.step, LR, rtol=1e-5)
    assert flat.end_to_peak == pytest.approx(1.0) and flat.start_to_peak == pytest.approx(1.0)


def test_loss_trend_is_flat_for_optimizers_that_ignore_the_loss():
    out = probe.loss_trend(optax.adam(1e-2), rates=(-3.0, 0.0, 2.0), steps=40)
    np.testing.assert_allclose(out.relative, 1.0, rtol=1e-6)


def plateau(patience=5):
    return optax.chain(optax.sgd(LR), optax.contrib.reduce_on_plateau(patience=patience, factor=0.5, cooldown=0,
                                                                        accumulation_size=1))


def test_loss_trend_of_reduce_on_plateau_cuts_the_step_only_when_the_loss_stops_falling():
    out = probe.loss_trend(plateau(), rates=(-3.0, 0.0, 1.0), steps=60)
    np.testing.assert_allclose(out.step[0], LR, rtol=1e-5)       # a falling loss: no cut
    assert out.step[1] < LR / 4 and out.step[2] < LR / 4          # flat or rising: cut, again and again


def test_a_probe_passes_a_synthetic_loss_to_an_optimizer_that_needs_value_and_says_so():
    assert probe.needs_value(plateau()) and not probe.needs_value(optax.adam(1e-3))
    with pytest.warns(UserWarning, match="synthetic"):
        out = probe.schedule(plateau(), 50, trials=1)
    assert "value=" in out.note and "synthetic" in out.note
    np.testing.assert_allclose(out.step, LR, rtol=1e-5)           # the synthetic loss falls: never a plateau
    with pytest.warns(UserWarning, match="synthetic"):
        assert probe.impulse(plateau(), steps=10, trials=1).note
    with pytest.warns(UserWarning, match="synthetic"):
        assert probe.gradient_scale(plateau(), steps=2).note


def test_loss_trend_needs_the_flat_reference():
    with pytest.raises(ValueError, match="rates must include 0"):
        probe.loss_trend(optax.sgd(LR), rates=(-1.0, 1.0))


def test_plot_helpers_draw_one_line_per_optimizer():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from minilopt import viz

    opts = {"sgd": optax.sgd(LR), "momentum": optax.sgd(LR, momentum=0.9)}
    ax = viz.plot_impulse({k: probe.impulse(o, steps=20, trials=1) for k, o in opts.items()})
    texts = [t.get_text() for t in ax.get_legend().get_texts()]
    assert len(ax.get_lines()) == 3 and texts == ["sgd τ = 1", f"momentum τ = {(1 - 0.9**20) / 0.1:.3g}"]
    ax = viz.plot_gradient_scale({k: probe.gradient_scale(o, steps=1) for k, o in opts.items()})
    np.testing.assert_allclose(ax.get_lines()[0].get_ydata(), LR * ax.get_lines()[0].get_xdata(), rtol=1e-5)
    ax = viz.plot_schedule(probe.schedule(optax.sgd(LR), 40, trials=1), window=5)
    assert len(ax.get_lines()[0].get_ydata()) == 36
    ax = viz.plot_loss_trend({"sgd": probe.loss_trend(optax.sgd(LR), steps=20)})
    np.testing.assert_allclose(ax.get_lines()[0].get_ydata(), 1.0)
    plt.close("all")
