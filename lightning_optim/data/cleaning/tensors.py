"""Tensor/tabular cleaning: rows holding NaN or +-inf are dropped or imputed, and reported.

A *row* is one sample: index ``i`` along the first dimension, whatever the shape of the rest (a feature
vector, an image). Imputation fills each non-finite value with a statistic of the finite values at the same
position (column) over the other rows, or with zero.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import Tensor

log = logging.getLogger(__name__)

#: what to do with rows that hold NaN or inf
NONFINITE_POLICIES: tuple[str, ...] = ("drop", "mean", "median", "zero", "error", "keep")


@dataclass
class TensorCleaningReport:
    """What :func:`clean_nonfinite_rows` did.

    Attributes:
        rows: rows seen.
        bad_rows: rows holding at least one NaN or inf.
        nan_values: NaN values seen.
        inf_values: +-inf values seen.
        policy: the policy applied.
        dropped_rows: indices (into the input) of dropped rows.
        imputed_values: values replaced.
    """

    rows: int
    bad_rows: int
    nan_values: int
    inf_values: int
    policy: str
    dropped_rows: list[int]
    imputed_values: int

    @property
    def summary(self) -> dict[str, int | str]:
        return {
            "rows": self.rows,
            "bad_rows": self.bad_rows,
            "nan": self.nan_values,
            "inf": self.inf_values,
            "policy": self.policy,
            "dropped": len(self.dropped_rows),
            "imputed": self.imputed_values,
        }


def check_nonfinite_policy(policy: str) -> str:
    """Validate a non-finite policy.

    Raises:
        ValueError: for a policy outside :data:`NONFINITE_POLICIES`.
    """
    if policy not in NONFINITE_POLICIES:
        raise ValueError(f"Unknown `nonfinite` policy {policy!r}; allowed: {list(NONFINITE_POLICIES)}.")
    return policy


def nonfinite_rows(x: Tensor) -> Tensor:
    """Bool ``(N,)``: rows of ``x`` holding a NaN or inf (all False for integer tensors)."""
    if not x.is_floating_point() and not x.is_complex():
        return torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    if x.shape[0] == 0 or x.numel() == 0:  # no row, or rows of no value: nothing is non-finite
        return torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    return (~torch.isfinite(x)).reshape(x.shape[0], -1).any(1)


def column_fill_values(x: Tensor, policy: str) -> Tensor:
    """Per-position fill values (shape ``x.shape[1:]``) from the finite values of ``x`` over its rows.

    A position with no finite value at all gets 0.
    """
    finite = torch.isfinite(x)
    if policy == "zero":
        return torch.zeros(x.shape[1:], dtype=x.dtype, device=x.device)
    if policy == "mean":
        total = torch.where(finite, x, torch.zeros((), dtype=x.dtype, device=x.device)).sum(
            0, dtype=torch.float64
        )
        count = finite.sum(0)
        return torch.where(count > 0, total / count.clamp_min(1), torch.zeros_like(total)).to(x.dtype)
    if policy == "median":
        masked = torch.where(finite, x, torch.full((), float("nan"), dtype=x.dtype, device=x.device))
        med = masked.nanmedian(0).values
        return torch.nan_to_num(med, nan=0.0)
    raise ValueError(
        f"`nonfinite` policy {policy!r} has no fill value; allowed here: ['mean', 'median', 'zero']."
    )


def clean_nonfinite_rows(
    x: Tensor,
    y: Tensor | None = None,
    policy: str = "drop",
    fill: Tensor | None = None,
    name: str = "tensor",
) -> tuple[Tensor, Tensor | None, TensorCleaningReport]:
    """Drop or impute the rows of ``x`` that hold NaN or inf.

    Args:
        x: ``(N, ...)`` data, one sample per row.
        y: optional ``(N, ...)`` targets kept aligned with ``x`` (dropped rows are dropped from both).
        policy: ``"drop"`` the rows; ``"mean"``, ``"median"`` or ``"zero"`` to impute each bad value with the
            column statistic of the finite values; ``"error"`` to raise; ``"keep"`` to only report.
        fill: precomputed fill values of shape ``x.shape[1:]`` (for example fitted on the training split)
            used instead of statistics of ``x`` itself.
        name: what ``x`` is, for the log line and errors.

    Returns:
        ``(x, y, report)``; the input tensors are not modified.

    Raises:
        ValueError: unknown ``policy``; ``policy="error"`` and a non-finite value is present; ``x`` and
            ``y`` of different lengths.
    """
    check_nonfinite_policy(policy)
    if y is not None and y.shape[0] != x.shape[0]:
        raise ValueError(f"{name}: {x.shape[0]} rows but {y.shape[0]} targets.")
    bad = nonfinite_rows(x)
    n_bad = int(bad.sum())
    if x.is_floating_point():
        nan_values, inf_values = int(torch.isnan(x).sum()), int(torch.isinf(x).sum())
    else:
        nan_values = inf_values = 0
    dropped: list[int] = []
    imputed = 0
    if n_bad:
        if policy == "error":
            raise ValueError(
                f"{name}: {n_bad} of {x.shape[0]} rows hold NaN/inf ({nan_values} NaN, {inf_values} inf) and "
                f"`nonfinite`='error'; allowed policies: {list(NONFINITE_POLICIES)}."
            )
        if policy == "drop":
            dropped = bad.nonzero().flatten().tolist()
            keep = ~bad
            x = x[keep]
            y = y[keep] if y is not None else None
        elif policy != "keep":
            values = (
                fill.to(dtype=x.dtype, device=x.device) if fill is not None else column_fill_values(x, policy)
            )
            mask = ~torch.isfinite(x)
            imputed = int(mask.sum())
            x = torch.where(mask, values.expand_as(x), x)
    report = TensorCleaningReport(
        x.shape[0] + len(dropped), n_bad, nan_values, inf_values, policy, dropped, imputed
    )
    log.log(logging.WARNING if n_bad else logging.DEBUG, "Cleaning %s: %s", name, report.summary)
    return x, y, report
