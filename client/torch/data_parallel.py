"""Engram rows in a data-parallel job: the ranks of a `torch.distributed` job push their
gradient rows as shares of one step, which the store applies once every rank has pushed,
reduced as DDP reduces the dense gradients (the mean over ranks by default). Dense parameters
go through DDP as usual; the tables never go through an all-reduce.

    torch.distributed.init_process_group("gloo")  # or nccl; torchrun sets rank and world
    pipeline = TrainPipeline(client, step_sync=StepSync.from_process_group())
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.distributed as dist

from store.spec import SyncStep


@dataclass(frozen=True)
class StepSync:
    """This rank's place in the job, and how its steps are reduced and how long a step waits
    for every rank (0: the daemon's default, 300 s) before it fails for all."""

    rank: int
    world_size: int
    reduction: str = "mean"
    timeout_s: float = 0.0

    @staticmethod
    def from_process_group(
        group: dist.ProcessGroup | None = None, reduction: str = "mean", timeout_s: float = 0.0
    ) -> StepSync:
        """Rank and world size of `group` (the default group when None)."""
        if not dist.is_available() or not dist.is_initialized():
            raise ValueError(
                "StepSync.from_process_group needs torch.distributed initialized "
                "(torch.distributed.init_process_group, as torchrun's scripts call it)"
            )
        sync = StepSync(dist.get_rank(group), dist.get_world_size(group), reduction, timeout_s)
        sync.share(1).check()
        return sync

    def share(self, step: int) -> SyncStep:
        """This rank's share of step `step` of a table."""
        return SyncStep(step, self.rank, self.world_size, self.reduction, self.timeout_s)
