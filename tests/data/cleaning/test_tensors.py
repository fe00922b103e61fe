"""NaN/inf rows dropped or imputed, and reported."""

from __future__ import annotations

import logging

import pytest
import torch

from lightning_optim.data.cleaning.tensors import NONFINITE_POLICIES, clean_nonfinite_rows, nonfinite_rows

NAN, INF = float("nan"), float("inf")


@pytest.fixture
def table():
    x = torch.tensor([[1.0, 2.0, 3.0], [NAN, 4.0, 5.0], [3.0, 6.0, -INF], [5.0, 8.0, 7.0]])
    return x, torch.tensor([0, 1, 2, 3])


def test_detects_bad_rows(table):
    assert nonfinite_rows(table[0]).tolist() == [False, True, True, False]
    assert nonfinite_rows(torch.ones(3, 2, dtype=torch.long)).tolist() == [False] * 3


def test_drop_keeps_targets_aligned_and_reports(table, caplog):
    with caplog.at_level(logging.WARNING, logger="lightning_optim.data.cleaning.tensors"):
        x, y, report = clean_nonfinite_rows(*table, policy="drop", name="features")
    assert y.tolist() == [0, 3]
    assert torch.equal(x, table[0][[0, 3]])
    assert report.summary == {
        "rows": 4,
        "bad_rows": 2,
        "nan": 1,
        "inf": 1,
        "policy": "drop",
        "dropped": 2,
        "imputed": 0,
    }
    assert report.dropped_rows == [1, 2]
    assert "Cleaning features" in caplog.text


@pytest.mark.parametrize(
    ("policy", "fill_col0", "fill_col2"),
    [("mean", 3.0, 5.0), ("median", 3.0, 5.0), ("zero", 0.0, 0.0)],
)
def test_impute_uses_finite_column_statistics(table, policy, fill_col0, fill_col2):
    x, y, report = clean_nonfinite_rows(*table, policy=policy)
    assert torch.isfinite(x).all() and y.tolist() == [0, 1, 2, 3]
    assert x[1, 0].item() == pytest.approx(fill_col0)
    assert x[2, 2].item() == pytest.approx(fill_col2)
    assert report.imputed_values == 2
    assert not torch.isfinite(table[0]).all()  # input untouched


def test_impute_with_given_fill_and_images():
    images = torch.rand(5, 1, 2, 2)
    images[3, 0, 1, 1] = NAN
    x, _, report = clean_nonfinite_rows(images, policy="mean", fill=torch.full((1, 2, 2), 0.25))
    assert x[3, 0, 1, 1].item() == 0.25 and report.bad_rows == 1


def test_error_keep_and_unknown_policy(table):
    with pytest.raises(ValueError, match="2 of 4 rows hold NaN/inf"):
        clean_nonfinite_rows(*table, policy="error")
    x, _, report = clean_nonfinite_rows(*table, policy="keep")
    assert x.shape[0] == 4 and report.bad_rows == 2
    with pytest.raises(
        ValueError,
        match=r"`nonfinite` policy 'fix'; allowed: "
        + str(list(NONFINITE_POLICIES)).replace("[", r"\[").replace("]", r"\]"),
    ):
        clean_nonfinite_rows(*table, policy="fix")
