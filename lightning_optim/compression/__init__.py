"""Deprecated package (removed in 0.3.0): its modules moved.

- ``compression.compaction`` -> :mod:`lightning_optim.functional.pruning.compaction`
- ``compression.measure``, ``compression.report`` -> :mod:`lightning_optim.functional.compression_report`
- ``compression.artifact`` -> :mod:`lightning_optim.functional.artifact`
- ``compression.quantization`` -> :mod:`lightning_optim.functional.quantization`
- ``compression.pipeline`` (``WarmStart``, ``CompressionPipeline``) -> :mod:`lightning_optim.callbacks.pipeline`
"""

from lightning_optim._deprecation import moved

__getattr__ = moved(__name__, "lightning_optim.functional.pruning.compaction")
