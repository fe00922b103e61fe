"""The distillation losses against hand-computed references, and the ramps."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lightning_optim.functional.distillation.losses import (
    DISTILLATION_RAMPS,
    check_alpha,
    check_temperature,
    distillation_loss,
    feature_distillation_loss,
    kd_loss,
    ramp_length,
    ramp_progress,
    scheduled_value,
)
from lightning_optim.functional.ramps import ramp


def _logits(seed: int, shape=(6, 5)) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(*shape, generator=g) * 3
    t = torch.randn(*shape, generator=g) * 3
    y = torch.randint(0, shape[-1], (shape[0],), generator=g)
    return s, t, y


def _reference_kd(s: torch.Tensor, t: torch.Tensor, temperature: float) -> float:
    """T^2 * mean_b sum_c p_t * (log p_t - log p_s), written out element by element."""
    total = 0.0
    for b in range(s.shape[0]):
        zs = [v / temperature for v in s[b].tolist()]
        zt = [v / temperature for v in t[b].tolist()]
        ls = math.log(sum(math.exp(v) for v in zs))
        lt = math.log(sum(math.exp(v) for v in zt))
        for a, c in zip(zs, zt):
            pt = math.exp(c - lt)
            total += pt * ((c - lt) - (a - ls))
    return temperature**2 * total / s.shape[0]


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0, 4.0, 20.0])
def test_kd_loss_matches_hand_computed_reference(temperature):
    s, t, _ = _logits(0)
    got = kd_loss(s, t, temperature).item()
    assert got == pytest.approx(_reference_kd(s, t, temperature), rel=1e-5, abs=1e-6)


def test_kd_loss_has_the_t_squared_factor():
    s, t, _ = _logits(1)
    for temperature in (1.0, 3.0, 7.0):
        kl = F.kl_div(
            F.log_softmax(s / temperature, -1), F.softmax(t / temperature, -1), reduction="batchmean"
        )
        assert kd_loss(s, t, temperature).item() == pytest.approx(temperature**2 * kl.item(), rel=1e-5)


def test_kd_gradient_is_t_times_probability_difference():
    """d/ds [T^2 KL(p_t || softmax(s/T))] = T (softmax(s/T) - softmax(t/T)) / batch."""
    s, t, _ = _logits(2)
    s.requires_grad_(True)
    temperature = 3.0
    kd_loss(s, t, temperature).backward()
    expected = (
        temperature * (F.softmax(s.detach() / temperature, -1) - F.softmax(t / temperature, -1)) / s.shape[0]
    )
    torch.testing.assert_close(s.grad, expected, rtol=1e-5, atol=1e-6)


def test_kd_loss_is_zero_for_identical_logits_and_positive_otherwise():
    s, t, _ = _logits(3)
    assert kd_loss(s, s.clone(), 4.0).item() == pytest.approx(0.0, abs=1e-6)
    assert kd_loss(s, t, 4.0).item() > 0


def test_kd_loss_does_not_backpropagate_into_the_teacher():
    s, t, _ = _logits(4)
    t.requires_grad_(True)
    kd_loss(s.requires_grad_(True), t, 2.0).backward()
    assert t.grad is None


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_distillation_loss_mixes_kd_and_ce_by_alpha(alpha):
    s, t, y = _logits(5)
    temperature = 4.0
    ce = F.cross_entropy(s, y).item()
    kd = _reference_kd(s, t, temperature)
    got = distillation_loss(s, t, y, temperature, alpha).item()
    assert got == pytest.approx(alpha * kd + (1 - alpha) * ce, rel=1e-5)
    if alpha == 0.0:
        assert got == pytest.approx(ce, rel=1e-6)
    if alpha == 1.0:
        assert got == pytest.approx(kd, rel=1e-5)


def test_kd_loss_in_float32_under_bfloat16_inputs():
    s, t, _ = _logits(6)
    out = kd_loss(s.bfloat16(), t.bfloat16(), 2.0)
    assert out.dtype == torch.float32
    assert out.item() == pytest.approx(
        _reference_kd(s.bfloat16().float(), t.bfloat16().float(), 2.0), rel=1e-4
    )


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_temperature_must_be_positive(bad):
    s, t, _ = _logits(7)
    with pytest.raises(ValueError, match="temperature"):
        kd_loss(s, t, bad)
    with pytest.raises(ValueError, match="temperature"):
        check_temperature(bad)


@pytest.mark.parametrize("bad", [-0.01, 1.01, 2.0])
def test_alpha_must_be_in_unit_interval(bad):
    s, t, y = _logits(8)
    with pytest.raises(ValueError, match="alpha"):
        distillation_loss(s, t, y, 2.0, bad)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        check_alpha(bad)


def test_shape_mismatch_is_a_clear_error():
    s, _, _ = _logits(9, shape=(4, 10))
    _, t, _ = _logits(9, shape=(4, 7))
    with pytest.raises(ValueError, match="same shape.*teacher gives \\(4, 7\\).*student gives \\(4, 10\\)"):
        kd_loss(s, t, 2.0)


def test_feature_losses():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(3, 4, 5, 5, generator=g), torch.randn(3, 4, 5, 5, generator=g)
    assert feature_distillation_loss(a, b, "mse").item() == pytest.approx(
        ((a - b) ** 2).mean().item(), rel=1e-6
    )
    assert feature_distillation_loss(a, a, "cosine").item() == pytest.approx(0.0, abs=1e-6)
    assert feature_distillation_loss(a, -a, "cosine").item() == pytest.approx(2.0, abs=1e-6)
    assert feature_distillation_loss(a, 3 * a, "cosine").item() == pytest.approx(0.0, abs=1e-5)
    with pytest.raises(ValueError, match="Unknown feature loss"):
        feature_distillation_loss(a, b, "l1")
    with pytest.raises(ValueError, match="Feature shapes differ"):
        feature_distillation_loss(a, b[:, :2], "mse")


def test_scheduled_value():
    assert scheduled_value(1.0, None, 0.7) == 1.0
    assert scheduled_value(1.0, 3.0, 0.0) == 1.0
    assert scheduled_value(1.0, 3.0, 0.5) == pytest.approx(2.0)
    assert scheduled_value(1.0, 3.0, 1.0) == 3.0
    assert scheduled_value(1.0, 3.0, 5.0) == 3.0  # clamped
    assert scheduled_value(1.0, 3.0, 0.25, "cosine") == pytest.approx(
        1.0 + 2.0 * 0.5 * (1 - math.cos(math.pi / 4))
    )
    with pytest.raises(ValueError, match=r"Unknown `schedule` 'step'; allowed: \['linear', 'cosine'\]\."):
        scheduled_value(1.0, 2.0, 0.5, "step")
    with pytest.raises(ValueError, match="schedule"):  # a ramp kind that distillation does not offer
        scheduled_value(1.0, 2.0, 0.5, "cubic")


@pytest.mark.parametrize("kind", DISTILLATION_RAMPS)
@pytest.mark.parametrize("progress", [-0.2, 0.0, 0.3, 0.5, 1.0, 1.7])
def test_scheduled_value_is_the_shared_ramp(kind, progress):
    assert scheduled_value(4.0, 1.5, progress, kind) == ramp(progress, 4.0, 1.5, kind)


def test_ramp_length_and_progress():
    assert ramp_length(3, 1, 9, 20) == 3.0  # schedule_epochs first
    assert ramp_length(None, 1, 9, 20) == 8.0  # then up to end_epoch
    assert ramp_length(None, 1, None, 20) == 19.0  # then up to max_epochs
    assert ramp_length(None, 5, None, 5) == 1.0  # at least one epoch
    for max_epochs in (None, -1):
        with pytest.raises(ValueError, match="needs `schedule_epochs` or `end_epoch`"):
            ramp_length(None, 0, None, max_epochs)
    assert ramp_progress(3, 1, 4.0) == 0.5
    assert ramp_progress(3, 1, 4.0, batch_idx=2, batches=8) == (2 + 0.25) / 4.0  # per step within the epoch
    assert ramp_progress(3, 1, 4.0, batch_idx=2, batches=float("inf")) == 0.5  # unknown batches: per epoch
    assert ramp_progress(0, 1, 4.0) == -0.25  # before the start (scheduled_value clamps)
