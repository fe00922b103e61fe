"""Lightning plugins: :class:`AtomicCheckpointIO`, checkpoints written so that a crash or a full disk never
leaves a broken one in place of the last good one.

Example::

    from lightning_optim.plugins import AtomicCheckpointIO

    trainer = Trainer(plugins=[AtomicCheckpointIO()])
"""

from lightning_optim.plugins.checkpoint_io import AtomicCheckpointIO, CheckpointWriteError

__all__ = ["AtomicCheckpointIO", "CheckpointWriteError"]
