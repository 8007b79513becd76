"""The main job end to end: a local store daemon serving Engram tables.

Starts `engram-store serve` on a free loopback port with a temporary data directory, creates
one table per Engram layer (the reference demo configuration: 2- and 3-grams, 8 heads each,
layers 1 and 15), hashes a real sentence with the reference tokenizer, looks its rows up over
gRPC (hashed by the server from raw token ids, and by key), pushes gradients through the
server-side Adam, writes a checkpoint, and stops the daemon with SIGTERM.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np

from client import EngramClient, NgramHashMapping
from store.local import LocalDaemon

REFERENCE_TOKENIZER = os.path.join(
    os.path.dirname(__file__), "..", "data", "engram-hash", "tokenizer.json"
)
SENTENCE = "Only Alexander the Great could tame the horse Bucephalus."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tokenizer", default=REFERENCE_TOKENIZER)
    parser.add_argument("--text", default=SENTENCE)
    parser.add_argument("--dim", type=int, default=32, help="embedding width per head")
    parser.add_argument("--data-dir", help="where the daemon keeps its data (default: temporary)")
    parser.add_argument(
        "--daemon-log", help="the file the daemon logs to (default: this program's stderr)"
    )
    args = parser.parse_args()

    mapping = NgramHashMapping(
        engram_vocab_size=[40960, 40960],
        max_ngram_size=3,
        n_embed_per_ngram=args.dim * 8,
        n_head_per_ngram=8,
        layer_ids=[1, 15],
        tokenizer_name_or_path=args.tokenizer,
        pad_id=0,
        seed=0,
    )
    tokenizer = mapping.compressed_tokenizer.tokenizer
    ids = np.array([tokenizer.encode(args.text, add_special_tokens=False).ids])
    print(f"text: {args.text!r} -> {ids.shape[1]} tokens")

    with tempfile.TemporaryDirectory(dir=args.data_dir) as data_dir:
        daemon = LocalDaemon(os.path.join(data_dir, "store"), log_file=args.daemon_log).start()
        if args.daemon_log:
            print(f"daemon log: {args.daemon_log}")
        try:
            with EngramClient(daemon.address) as store:
                for layer in mapping.layer_ids:
                    serve_layer(store, mapping, layer, ids, args.dim)
                (checkpoint,) = store.checkpoint()
                print(
                    f"checkpoint {checkpoint.id}: {len(checkpoint.tables)} tables, "
                    f"{sum(t.rows for t in checkpoint.tables)} rows, "
                    f"{sum(t.bytes for t in checkpoint.tables)} bytes"
                )
        finally:
            code = daemon.stop()
        print(f"daemon stopped with exit code {code}")
        if code != 0:
            raise SystemExit(code)


def serve_layer(
    store: EngramClient, mapping: NgramHashMapping, layer: int, ids: np.ndarray, dim: int
) -> None:
    """One Engram layer's table: created with the layer's hash config, looked up by token ids
    and by key, trained by one Adam step."""
    name = f"engram-L{layer}"
    info = store.create_table(
        name,
        mapping.layer_table_rows(layer),
        dim,
        dtype="bfloat16",
        seed=layer,
        optimizer="adam",
        lr=1e-3,
        hash_config=mapping.hash_config(layer),
    )
    start = time.perf_counter()
    rows = store.lookup_tokens(name, ids)
    elapsed = time.perf_counter() - start
    keys = mapping.row_keys(ids)[layer]
    assert np.array_equal(rows, store.lookup(name, keys)), "hashing disagrees"
    print(
        f"layer {layer:>2}: {info.num_rows} x {dim} bfloat16 rows; "
        f"token lookup {rows.shape} over gRPC in {elapsed * 1e3:.1f} ms"
    )
    flat = keys.reshape(-1)
    pushed = store.push(name, flat, np.ones((flat.size, dim), np.float32))
    after = store.lookup(name, keys)
    print(
        f"          Adam step {pushed.step} on {pushed.rows} rows: "
        f"mean change {float(np.mean(after - rows)):+.5f}"
    )


if __name__ == "__main__":
    main()
