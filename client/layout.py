"""Where a table's rows live among the daemons that shard it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True)
class TableLayout:
    """Where a table's rows live: shard i holds global rows [bounds[i], bounds[i + 1])."""

    bounds: npt.NDArray[np.uint64]
    dim: int
    # Each shard's TableInfo.incarnation, quoted by lookups and pushes so that a daemon
    # whose table was created anew refuses them rather than serve another layout's rows.
    incarnations: tuple[str, ...] = ()

    def incarnation(self, shard: int) -> str:
        return self.incarnations[shard] if self.incarnations else ""

    def split(
        self, keys: npt.NDArray[np.uint64], every_shard: bool = False
    ) -> list[tuple[int, npt.NDArray[np.intp]]]:
        """For each shard with keys (or each shard, with `every_shard`): (shard, positions of
        its keys), in key order."""
        if len(self.bounds) == 2:
            return [(0, np.arange(len(keys)))]
        shard_of = np.searchsorted(self.bounds, keys, side="right") - 1
        order = np.argsort(shard_of, kind="stable")
        counts = np.bincount(shard_of, minlength=len(self.bounds) - 1)
        starts = np.concatenate([[0], np.cumsum(counts)])
        return [
            (s, order[starts[s] : starts[s + 1]])
            for s in range(len(counts))
            if counts[s] or every_shard
        ]
