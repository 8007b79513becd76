"""An engine's read path for one Engram layer through daemons (`EngramClient`): the same
reads as the in-process `EngramLayerReader` (a rank's heads or row range, local ids, masked
positions, both E8M0 rules, submitted ahead), for an engine whose tables live in Engram
Store rather than on its own disk. The table holds the whole layer (sharded over daemons or
not); only the rows the share needs cross the wire, as stored (264 bytes an FP8 row against
512 as bfloat16), and are decoded into the engine's buffer by Rust with the GIL released."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from client.client import EngramClient
from client.engram_reader import LayerReads
from store import _native


class DaemonLayerReader(LayerReads):
    """Reads a layer's share from the table `table` of `client`, which holds the whole
    layer: every head's rows, in hash-id column order."""

    def __init__(
        self,
        client: EngramClient,
        table: str,
        head_sizes: Sequence[int],
        heads: range | None = None,
        rows: tuple[int, int] | None = None,
        local_ids: bool = False,
        e8m0: str = "torch",
    ) -> None:
        super().__init__(head_sizes, heads, rows, local_ids, e8m0)
        info = client.describe(table)
        layer_rows = sum(int(s) for s in head_sizes)
        if info.num_rows != layer_rows:
            raise ValueError(
                f"table {table!r} holds {info.num_rows} rows; a layer of these heads has "
                f"{layer_rows}"
            )
        self.client, self.table, self.stored, self.dim = client, table, info.dtype, info.dim

    def _fill(self, ids: np.ndarray, mask: np.ndarray | None, out: np.ndarray, dtype: str) -> None:
        keys = self.share.keys(ids, mask)
        held = keys[keys != _native.Table.NO_ROW] + np.uint64(self.share.first_row)
        fetched = self.client.lookup(self.table, held, dtype=self.stored)
        _native.decode_engine_rows(
            keys,
            self.stored,
            self.dim,
            fetched.reshape(-1).view(np.uint8),
            out,
            dtype,
            self.e8m0 == "zero",
        )
