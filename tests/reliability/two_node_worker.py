"""Worker of the two-node tests: one process per "node" under ``torchrun --nnodes=2 --nproc_per_node=1``, which fits
the DDP entries (``tests/callbacks/ddp_matrix_worker.py``) and then the FSDP2 entries
(``tests/callbacks/fsdp2_matrix_worker.py``, no resume) in the same process group: one start-up per node.

Usage: torchrun --nnodes=2 --nproc_per_node=1 ... tests/reliability/two_node_worker.py OUT DDP,NAMES FSDP2,NAMES
Results go to ``OUT/ddp`` and ``OUT/fsdp2`` as the two workers write them.
"""

from __future__ import annotations

import sys
from pathlib import Path

from tests.callbacks import ddp_matrix_worker, fsdp2_matrix_worker
from tests.ddp_support import leave_in_lockstep


def main() -> None:
    out = Path(sys.argv[1])
    for part in ("ddp", "fsdp2"):
        (out / part).mkdir(parents=True, exist_ok=True)
    ddp_matrix_worker.run(out / "ddp", [n for n in sys.argv[2].split(",") if n])
    fsdp2_matrix_worker.run(out / "fsdp2", [n for n in sys.argv[3].split(",") if n], resume=False)
    leave_in_lockstep()


if __name__ == "__main__":
    main()
