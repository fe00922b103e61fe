"""Bad-input catalogue part: weight sharing (non-linear quantization), its size budget and its ``.lws`` files."""

from __future__ import annotations

from pathlib import Path

ENTRIES: list[tuple[str, str, str, str]] = [
    ("WeightSharing", "a bit width outside 1-8", "WeightSharing(bits=9)", "ValueError"),
    ("WeightSharing", "a per-layer bit width outside 1-8", "WeightSharing(bits={'fc1': 0})", "ValueError"),
    ("WeightSharing", "an unknown k-means initialisation", "WeightSharing(init='kmeans++')", "ValueError"),
    (
        "WeightSharing",
        "a codebook with more centroids than the layer has weights",
        "fit(WeightSharing(bits={'fc3': 8}, include=['fc3']), model=LeNet300100(in_features=64, hidden=(16, 8)))",
        "ValueError",
    ),
    (
        "WeightSharing",
        "a `bits` pattern that matches no layer",
        "fit(WeightSharing(bits={'fc9': 4}))",
        "ValueError",
    ),
    (
        "WeightSharing",
        "a size budget below the smallest artifact the settings allow",
        "fit(WeightSharing(bits=8, size_budget_bytes=1000, bit_choices=[2, 3]), max_epochs=2)",
        "ValueError",
    ),
    (
        "WeightSharing",
        "a size budget and an average bit width together",
        "WeightSharing(size_budget_bytes=20000, average_bits=3)",
        "ValueError",
    ),
    ("WeightSharing", "an average bit width above 8", "WeightSharing(average_bits=9)", "ValueError"),
    (
        "WeightSharing",
        "an unknown sensitivity",
        "WeightSharing(size_budget_bytes=20000, sensitivity='fisher')",
        "ValueError",
    ),
    (
        "WeightSharing",
        "a size-accuracy curve budget of 0 bytes",
        "WeightSharing(curve_budgets=[0])",
        "ValueError",
    ),
    (
        "WeightSharing",
        "`fixed_bits` without a budget",
        "WeightSharing(fixed_bits={'fc3': 4})",
        "ValueError",
    ),
    (
        "WeightSharing",
        "a truncated .lws artifact",
        "load_shared(TRUNCATED_LWS, LeNet300100(in_features=64, hidden=(16, 8)))",
        "ValueError",
    ),
    (
        "WeightSharing",
        "a .lws artifact with one byte altered",
        "load_shared(ALTERED_LWS, LeNet300100(in_features=64, hidden=(16, 8)))",
        "ValueError",
    ),
    (
        "WeightSharing",
        "a .lws artifact loaded into another architecture",
        "load_shared(GOOD_LWS, LeNet300100(in_features=64, hidden=(32, 8)))",
        "ValueError",
    ),
]

MUST_NAME: dict[str, str] = {
    "a codebook with more centroids than the layer has weights": "fc3.weight",
    "a size budget below the smallest artifact the settings allow": "smallest artifact these settings allow",
    "a size budget and an average bit width together": "not both",
    "a truncated .lws artifact": "truncated.lws",
    "a .lws artifact with one byte altered": "altered.lws",
    "a .lws artifact loaded into another architecture": "shape",
}


def fixtures(tmp: Path) -> dict:
    import torch

    from lightning_optim.functional.weight_sharing import load_shared, save_shared, share_weights_
    from lightning_optim.models import LeNet300100

    folder = tmp / "weight_sharing"
    folder.mkdir()
    torch.manual_seed(0)
    model = LeNet300100(in_features=64, hidden=(16, 8))
    share_weights_(model, 3)
    blob = save_shared(model, folder / "good.lws")
    (folder / "truncated.lws").write_bytes(blob[: len(blob) // 2])
    altered = bytearray(blob)
    altered[len(blob) // 2] ^= 0x10
    (folder / "altered.lws").write_bytes(bytes(altered))
    return {
        "load_shared": load_shared,
        "GOOD_LWS": str(folder / "good.lws"),
        "TRUNCATED_LWS": str(folder / "truncated.lws"),
        "ALTERED_LWS": str(folder / "altered.lws"),
    }
