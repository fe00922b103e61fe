"""Settings of CompressionReport for the generated callback tests (see tests/callbacks/callback_settings.py)."""


def _check_active(trainer, module, callback) -> None:
    assert [r["stage"] for r in callback.rows] == ["fit start", "fit end"]
    assert callback.rows[-1]["test_samples"] > 0 and len(callback.history) == 2
    assert callback.paths["markdown"].endswith(".md")


SETTINGS = {
    "CompressionReport": {
        "kwargs": {
            "latency_batch_sizes": [1, 4],
            "latency_repeats": 2,
            "latency_warmup": 0,
            "plot": False,
            "save_artifact": False,
            "verbose": False,
        },
        "model": "convnet3",
        "check_active": _check_active,
        # latencies are timings: they differ between two runs (the rest of the state is compared)
        "resume_ignore": ["rows"],
    },
}
