"""The torchrun world a process belongs to, read from the environment without importing torch: the
runner asks it before every stage, and `pipeline status` or `--help` should not pay torch's import.

torchrun sets WORLD_SIZE, RANK and LOCAL_RANK in every process it starts; without them the world is one
process. pipeline.distributed (the collectives) builds on this.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class World:
    rank: int
    size: int
    local_rank: int

    @property
    def main(self) -> bool:
        return self.rank == 0


ONE = World(0, 1, 0)


def from_env() -> World:
    """The world torchrun describes in the environment (one process when it is not set)."""
    try:
        size, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError as exc:
        raise RuntimeError(f"torchrun environment: WORLD_SIZE/RANK/LOCAL_RANK must be integers ({exc})") from None
    return World(rank, size, local) if size > 1 else ONE
