"""Reading a daemon's ChangedRows answer: what turns one of its checkpoints into its latest,
as checkpoint packs (the format of rust/src/checkpoint.rs), optionally kept on disk as an
incremental copy: each pack at `<dir>/<checkpoint>/<table>.pack`, and the answer's header,
with the latest checkpoint's manifest, at `<dir>/changes.json`."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from google.protobuf import json_format

from client.results import ChangedPackInfo, ChangedRows
from store._proto.engram.store.v1 import store_pb2 as pb
from store.conversions import packs_to_files
from store.spec import check_table_name


def read_changes(
    since: int,
    stream: Iterator[pb.ChangedRowsResponse],
    save_to: str | os.PathLike[str] | None,
) -> ChangedRows:
    header = next(stream).header
    directory = Path(save_to) if save_to is not None else None
    for table in header.tables:
        # Names become file names: one the daemon could not have made must not name a path.
        check_table_name(table.name)
    packs = [
        ChangedPackInfo(
            t.name,
            p.checkpoint,
            p.rows,
            p.bytes,
            str(directory / str(p.checkpoint) / f"{t.name}.pack") if directory else "",
        )
        for t in header.tables
        for p in t.packs
    ]
    packs_to_files(header, stream, [p.path or None for p in packs])
    if directory is not None:
        directory.mkdir(parents=True, exist_ok=True)
        text = json_format.MessageToJson(header, preserving_proto_field_name=True)
        (directory / "changes.json").write_text(text)
    return ChangedRows(
        store_id=header.store_id,
        since=since,
        checkpoint=header.checkpoint,
        reset=[t.name for t in header.tables if t.reset],
        packs=packs,
    )
