"""Importance: unit norms, single-weight scores, how many entries a sparsity prunes, and which ones."""

from __future__ import annotations

import pytest
import torch

from lightning_optim.functional.pruning.importance import (
    IMPORTANCES,
    check_importance,
    keep_mask_from_scores,
    magnitude_scores,
    num_pruned,
    unit_scores,
)


@pytest.mark.parametrize(
    "n,sparsity,keep_one,expected",
    [
        (10, 0.0, False, 0),
        (10, 0.25, False, 2),
        (10, 0.35, False, 4),
        (10, 0.99, False, 10),
        (10, 0.99, True, 9),
    ],
)
def test_num_pruned_rounds_and_keeps_one(n, sparsity, keep_one, expected):
    assert num_pruned(n, sparsity, keep_one) == expected


def test_unit_scores_l1_l2_and_normalized():
    w = torch.tensor([[3.0, -4.0, 0.0, 0.0], [1.0, 1.0, -1.0, 1.0]])
    assert unit_scores(w, "l1").tolist() == [7.0, 4.0]
    assert unit_scores(w, "magnitude").tolist() == [7.0, 4.0]
    assert unit_scores(w, "l2").tolist() == pytest.approx([5.0, 2.0])
    assert unit_scores(w, "l1", normalize=True).tolist() == pytest.approx([7.0 / 4, 1.0])  # mean |w|
    assert unit_scores(w, "l2", normalize=True).tolist() == pytest.approx([2.5, 1.0])  # RMS
    conv = torch.ones(3, 2, 3, 3)
    conv[1] *= 2
    assert unit_scores(conv).tolist() == [18.0, 36.0, 18.0]  # a filter's weights are one unit


def test_magnitude_scores_are_float_abs():
    w = torch.tensor([[-2.0, 1.0]], dtype=torch.bfloat16)
    scores = magnitude_scores(w)
    assert scores.dtype == torch.float32 and scores.tolist() == [[2.0, 1.0]]


def test_keep_mask_prunes_the_lowest_ties_in_index_order():
    scores = torch.tensor([[0.5, 0.1, 0.1], [0.1, 0.9, 0.3]])
    assert keep_mask_from_scores(scores, 0).all()
    keep = keep_mask_from_scores(scores, 2)
    assert keep.shape == scores.shape
    assert keep.tolist() == [[True, False, False], [True, True, True]]
    assert keep_mask_from_scores(scores, 4).tolist() == [[True, False, False], [False, True, False]]


def test_unknown_importance():
    assert check_importance("l2") == "l2" and set(IMPORTANCES) == {"l1", "magnitude", "l2"}
    with pytest.raises(ValueError) as err:
        unit_scores(torch.ones(2, 2), "taylor")
    assert str(err.value) == "Unknown `importance` 'taylor'; allowed: ['l1', 'l2', 'magnitude']."
