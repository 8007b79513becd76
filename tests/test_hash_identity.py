"""Hash identity, carried and checked (client/hash_identity.py): a table made from a hash
config records what decides its rows; `describe` shows it, `export` writes it into the file's
metadata, and `import` refuses a file whose identity differs from the config it is given or
the table it replaces, naming the fields that differ (`--ignore-hash-identity` overrides)."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from daemon import Daemon, daemon_thread

from client import EngramClient
from client.config import EngramConfig
from client.engram_tables import create_engram_tables, hash_mapping
from client.hash_identity import METADATA_KEY, HashIdentity
from client.tensor_files import SafetensorsFile

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIG_FILE = REPO_ROOT / "examples" / "tiny_engram_lm.engram.json"
ROUND_TRIP = {"tables": [{"tensor": r"(?P<name>engram-L(?P<layer>\d+))", "table": "{name}"}]}


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    with daemon_thread(tmp_path / "data") as d:
        yield d


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "engram_cli", *args], capture_output=True, text=True, timeout=300
    )


def test_describe_and_hash_identity_show_the_configs_identity(daemon: Daemon) -> None:
    config = EngramConfig.from_json(CONFIG_FILE)
    mapping = hash_mapping(config)
    with EngramClient(daemon.address) as client:
        create_engram_tables(client, config)
        layer = config.layer_ids[0]
        described = client.describe(f"engram-L{layer}")
    assert described.hash_identity == mapping.hash_identity(layer)
    assert described.hash_identity.tokenizer_sha256 == mapping.compressed_tokenizer.sha256
    assert described.hash_identity.compressed_vocab_size == len(mapping.compressed_tokenizer)
    shown = cli("describe", f"engram-L{layer}", "--address", daemon.address, "--json")
    assert json.loads(shown.stdout)["hash_identity"] == mapping.hash_identity(layer).to_json()
    printed = cli("hash-identity", "--engram-config", str(CONFIG_FILE), "--json")
    assert printed.returncode == 0, printed.stderr
    layers = json.loads(printed.stdout)["layers"]
    assert layers == {str(n): mapping.hash_identity(n).to_json() for n in config.layer_ids}


def test_every_field_that_decides_rows_changes_the_identity(tokenizer_path: Path) -> None:
    base = EngramConfig.from_json(CONFIG_FILE)
    identity = hash_mapping(base).hash_identity(base.layer_ids[0])
    for change, field in (
        ({"seed": 1}, "multipliers"),
        ({"pad_id": 5}, "pad_id"),
        ({"engram_vocab_size": [x + 100 for x in base.engram_vocab_size]}, "tables_sha256"),
        ({"n_head_per_ngram": base.n_head_per_ngram * 2}, "n_head_per_ngram"),
    ):
        other = hash_mapping(dataclasses.replace(base, **change)).hash_identity(base.layer_ids[0])
        assert any(d.startswith(field) for d in identity.differences(other)), change
    renamed = dataclasses.replace(identity, tokenizer_sha256="0" * 64)
    assert [d.split(" ")[0] for d in identity.differences(renamed)] == ["tokenizer_sha256"]
    assert HashIdentity.from_json(identity.to_json(), "test") == identity
    with pytest.raises(ValueError, match="not a hash identity"):
        HashIdentity.from_json({"layer": 1}, "test")


def test_export_carries_the_identity_and_import_checks_it(tmp_path: Path) -> None:
    config = EngramConfig.from_json(CONFIG_FILE)
    layer = config.layer_ids[0]
    mapping_file = tmp_path / "mapping.json"
    mapping_file.write_text(json.dumps(ROUND_TRIP))
    exported = tmp_path / "engram.safetensors"
    with daemon_thread(tmp_path / "a") as a, EngramClient(a.address) as client:
        create_engram_tables(client, config)
        written = cli("export", f"engram-L{layer}", "--out", str(exported), "--address", a.address)
        assert written.returncode == 0, written.stderr
    metadata = SafetensorsFile(exported).metadata
    carried = json.loads(metadata[METADATA_KEY])
    assert carried == {f"engram-L{layer}": hash_mapping(config).hash_identity(layer).to_json()}

    other = tmp_path / "other.json"
    other.write_text(json.dumps({**json.loads(CONFIG_FILE.read_text()), "seed": 7}))
    tokenizer = str(Path(config.tokenizer_name_or_path))
    with daemon_thread(tmp_path / "b") as b:
        common = ["import", str(exported), "--mapping", str(mapping_file), "--address", b.address]
        refused = cli(*common, "--engram-config", str(other), "--tokenizer", tokenizer, "--quiet")
        assert refused.returncode == 3, refused.stderr
        assert "hashed otherwise than the given config: multipliers" in refused.stderr
        assert "--ignore-hash-identity" in refused.stderr
        with EngramClient(b.address) as client:
            assert client.list_tables() == [], "a refused import leaves nothing"
        accepted = cli(*common, "--engram-config", str(CONFIG_FILE), "--quiet")
        assert accepted.returncode == 0, accepted.stderr
        # A new version of the table, given no config: the file carries the table's very
        # identity, so the table keeps its hash config (it used to lose it).
        again = cli(*common, "--replace", "--quiet")
        assert again.returncode == 0, again.stderr
        with EngramClient(b.address) as client:
            kept = client.describe(f"engram-L{layer}").hash_identity
        assert kept == hash_mapping(config).hash_identity(layer)
        # The same file again over a table of another identity: refused, unless overridden.
        with EngramClient(b.address) as client:
            client.drop_table(f"engram-L{layer}")
            create_engram_tables(client, dataclasses.replace(config, seed=7))
        replaced = cli(*common, "--replace", "--quiet")
        assert replaced.returncode == 3 and "than table 'engram-L" in replaced.stderr
        forced = cli(*common, "--replace", "--ignore-hash-identity", "--quiet")
        assert forced.returncode == 0, forced.stderr


def test_a_file_without_an_identity_imported_with_a_config_takes_the_configs(
    tmp_path: Path,
) -> None:
    """DeepSeek's checkpoint carries no identity: imported with the config, each table of a
    layer the mapping names gets the layer's hash config (its identity, and token lookups);
    imported without one, none."""
    config = EngramConfig.from_json(CONFIG_FILE)
    layer = config.layer_ids[0]
    bare = dataclasses.replace(config, tokenizer_name_or_path="")
    exported = tmp_path / "engram.safetensors"
    mapping_file = tmp_path / "mapping.json"
    by_layer = {"tensor": r"(?P<name>engram-L(?P<layer>\d+))", "table": "{name}"}
    mapping_file.write_text(json.dumps({"tables": [by_layer]}))
    with daemon_thread(tmp_path / "a") as a, EngramClient(a.address) as client:
        create_engram_tables(client, bare)
        assert client.describe(f"engram-L{layer}").hash_identity is None
        written = cli("export", f"engram-L{layer}", "--out", str(exported), "--address", a.address)
        assert written.returncode == 0, written.stderr
    assert METADATA_KEY not in SafetensorsFile(exported).metadata
    with daemon_thread(tmp_path / "b") as b, EngramClient(b.address) as client:
        common = ["import", str(exported), "--mapping", str(mapping_file), "--address", b.address]
        plain = cli(*common, "--quiet")
        assert plain.returncode == 0, plain.stderr
        assert client.describe(f"engram-L{layer}").hash_identity is None
        configured = cli(*common, "--replace", "--engram-config", str(CONFIG_FILE), "--quiet")
        assert configured.returncode == 0, configured.stderr
        described = client.describe(f"engram-L{layer}")
        assert described.hash_identity == hash_mapping(config).hash_identity(layer)
        tokens = np.array([[5, 6, 7, 8]])
        rows = client.lookup_tokens(f"engram-L{layer}", tokens)
        keys = hash_mapping(config).row_keys(tokens)[layer]
        assert (rows == client.lookup(f"engram-L{layer}", keys)).all()
