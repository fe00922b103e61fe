"""Deprecated: moved to :mod:`lightning_optim.functional.compression_report.report` (this path is removed in 0.3.0)."""

from lightning_optim._deprecation import moved

_PKG = "lightning_optim.functional.compression_report"

__getattr__ = moved(
    __name__,
    f"{_PKG}.report",
    renamed={
        "evaluate_classifier": f"{_PKG}.evaluate:evaluate_classifier",
        "measure_model": f"{_PKG}.measure:measure_model",
        "precision_of": f"{_PKG}.measure:precision_of",
        "batch_of": f"{_PKG}.measure:batch_of",
        "plot_report": f"{_PKG}.plots:plot_report",
    },
)
