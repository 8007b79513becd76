"""Verbs about the daemons' state: checkpoints, restores, counters and scrubs."""

from __future__ import annotations

import argparse
import time

from client.results import CheckpointInfo
from engram_cli.confirm import declined
from engram_cli.exit_codes import EXIT_FAILURE
from engram_cli.output import emit
from engram_cli.parsing import Verbs, connect, int_list
from store.wording import counted


def checkpoint_line(c: CheckpointInfo) -> str:
    kind = f"incremental on {c.parent}" if c.parent else "full"
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(c.created_unix))
    rows = sum(t.rows for t in c.tables)
    tables = counted(len(c.tables), "table")
    return f"checkpoint {c.id} ({kind}, {when}): {tables}, {counted(rows, 'row')}"


def _by_shard(addresses: list[str], lines: list[str]) -> str:
    if len(addresses) == 1:
        return "\n".join(lines)
    return "\n".join(f"{a}: {line}" for a, line in zip(addresses, lines, strict=True))


def _checkpoint(args: argparse.Namespace) -> int:
    with connect(args) as client:
        infos = client.checkpoint(full=args.full)
        addresses = [s.address for s in client.shards]
    emit(args.json, {"checkpoints": infos}, _by_shard(addresses, list(map(checkpoint_line, infos))))
    return 0


def _checkpoints(args: argparse.Namespace) -> int:
    with connect(args) as client:
        by_shard = client.list_checkpoints_by_shard()
        addresses = [s.address for s in client.shards]
    human = [
        (f"{address}:\n" if len(addresses) > 1 else "")
        + ("\n".join(map(checkpoint_line, infos)) or "no checkpoints")
        for address, infos in zip(addresses, by_shard, strict=True)
    ]
    emit(
        args.json,
        {
            "shards": [
                {"address": a, "checkpoints": c} for a, c in zip(addresses, by_shard, strict=True)
            ]
        },
        "\n".join(human),
    )
    return 0


def _restore(args: argparse.Namespace) -> int:
    with connect(args) as client:
        ids = args.ids if args.ids is None or len(args.ids) > 1 else args.ids[0]
        addresses = [s.address for s in client.shards]
        status = declined(
            args.yes,
            "a restore deletes every push since the checkpoint, and the tables created since",
            _restore_summary(addresses, args.ids),
            "restore",
            "not restored",
        )
        if status is not None:
            return status
        infos = client.restore(ids)
    emit(
        args.json,
        {"checkpoints": infos},
        _by_shard(addresses, ["restored " + checkpoint_line(c) for c in infos]),
    )
    return 0


def _restore_summary(addresses: list[str], ids: list[int] | None) -> str:
    target = ",".join(str(i) for i in ids) if ids else "each daemon's latest"
    return (
        f"Restoring {', '.join(addresses)} to checkpoint {target}: every table goes back to "
        "it, pushes since are lost, and tables created since are dropped."
    )


def _stats(args: argparse.Namespace) -> int:
    with connect(args) as client:
        stats = client.stats()
    lines = []
    for daemon in stats:
        checkpoints = counted(daemon.checkpoints, "checkpoint")
        lines.append(f"{daemon.address}: up {daemon.uptime_s:.0f} s, {checkpoints}")
        for kind, plural, step in (
            ("flush", "flushes", daemon.flushes),
            ("checkpoint", "checkpoints", daemon.checkpoints_taken),
        ):
            if step.count:
                lines.append(
                    f"  {counted(step.count, kind, plural)}: pushes held off at most "
                    f"{step.longest_hold_s:.3f} s "
                    f"(last {step.last_hold_s:.3f} s), longest {step.longest_total_s:.3f} s"
                )
        lines += [
            f"  {t.name}: {counted(t.lookups, 'lookup')} ({counted(t.rows_looked_up, 'row')}), "
            f"{counted(t.pushes, 'push', 'pushes')} ({counted(t.rows_pushed, 'row')}), "
            f"{counted(t.duplicate_pushes, 'duplicate push', 'duplicate pushes')}"
            for t in daemon.tables
        ]
    emit(args.json, {"shards": stats}, "\n".join(lines))
    return 0


def _verify(args: argparse.Namespace) -> int:
    with connect(args) as client:
        report = client.verify(args.name)
    lines = [
        f"checked {counted(report.tables, 'table')} "
        f"({counted(report.written_rows, 'written row')}): "
        + ("every block matches its checksum" if report.ok else "DAMAGED")
    ]
    if report.unchecked:
        lines.append("kept without row checksums, not checked: " + ", ".join(report.unchecked))
    lines += [
        f"{b.address} {b.table}/{b.file}: rows {b.first_row}..{b.first_row + 63}"
        for b in report.damaged
    ]
    emit(args.json, {**vars(report), "ok": report.ok}, "\n".join(lines))
    return 0 if report.ok else EXIT_FAILURE


def _changed_rows(args: argparse.Namespace) -> int:
    with connect(args) as client:
        changes = client.changed_rows(args.since, save_to=args.save)
    packs = counted(len(changes.packs), "pack")
    lines = [f"checkpoint {changes.checkpoint} since {changes.since}: {packs}"]
    lines += [
        f"  {p.table} @ {p.checkpoint}: {counted(p.rows, 'row')}, {counted(p.bytes, 'byte')}"
        + (" (rebuilt from here)" if p.table in changes.reset else "")
        + (f" -> {p.path}" if p.path else "")
        for p in changes.packs
    ]
    emit(args.json, changes, "\n".join(lines))
    return 0


def register(verbs: Verbs) -> None:
    verbs.add_client(
        "checkpoint",
        "write a checkpoint on every daemon (pushes wait while it is taken)",
        _checkpoint,
        "engram-store checkpoint\nengram-store checkpoint --full --address a:50051,b:50051",
    ).add_argument(
        "--full", action="store_true", help="every row, not only those changed since the last"
    )
    verbs.add_client(
        "checkpoints",
        "list each daemon's checkpoints",
        _checkpoints,
        "engram-store checkpoints --json",
    )
    restore = verbs.add_client(
        "restore",
        "replace every table by a checkpoint's (pushes since are lost)",
        _restore,
        "engram-store restore            # each daemon's latest\n"
        "engram-store restore 7\n"
        "engram-store restore 7,7,8 --address a:50051,b:50051,c:50051   # one id per shard",
    )
    restore.add_argument(
        "ids",
        metavar="ID[,ID...]",
        type=int_list,
        nargs="?",
        help="checkpoint id, or one per daemon comma-separated (default: each daemon's latest)",
    )
    restore.add_argument("--yes", action="store_true", help="restore without asking")
    verbs.add_client(
        "stats",
        "request counters of each daemon since it started (restores and replacements included)",
        _stats,
        "engram-store stats",
    )
    verbs.add_client(
        "verify",
        f"check live tables against their row checksums (exit {EXIT_FAILURE}: damaged)",
        _verify,
        "engram-store verify\nengram-store verify emb --json",
    ).add_argument("name", nargs="?", default="", help="one table (default: every table)")
    changed = verbs.add_client(
        "changed-rows",
        "what changed on a daemon since one of its checkpoints, as checkpoint packs",
        _changed_rows,
        "engram-store changed-rows --since 7\n"
        "engram-store changed-rows --since 7 --save /backup/engram/8   # an incremental copy",
        "Lists (and with --save keeps) the packs that turn the daemon's checkpoint --since\n"
        "into its latest: for each table, the rows changed in each later checkpoint, or its\n"
        "whole chain from a full pack when the table is new or was re-created since. Followers\n"
        "(serve --follow) read the same answer.",
    )
    changed.add_argument(
        "--since", metavar="ID", type=int, default=0, help="checkpoint held (0: none)"
    )
    changed.add_argument("--save", metavar="DIR", help="write the packs and changes.json here")
