"""The code's layering rules (docs/reference/layout.md) and its one exception tree."""

from __future__ import annotations

import ast
import pickle
from pathlib import Path

import grpc
import numpy as np
import pytest
from conftest import REPO_ROOT

from client.errors import EngramClientError, ShardUnavailableError, from_rpc_error
from store import Table, _native, errors
from store.config import ConfigError


def imports(package: str) -> dict[str, set[str]]:
    """Each module file of `package` and the modules it imports."""
    found: dict[str, set[str]] = {}
    for path in sorted((REPO_ROOT / package).rglob("*.py")):
        if "_proto" in path.parts:
            continue
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                names.add(node.module)
                names.update(f"{node.module}.{a.name}" for a in node.names)
        found[str(path.relative_to(REPO_ROOT))] = names
    return found


def test_store_never_imports_the_client_or_the_command_line() -> None:
    for module, names in imports("store").items():
        assert not any(n.split(".")[0] in ("client", "engram_cli") for n in names), module


# What the client may use of the store package: the extension, the generated protocol, and
# the vocabulary both sides of the wire share.
CLIENT_MAY_IMPORT = ("store._native", "store._proto", "store.spec", "store.errors",
                     "store.conversions", "store.arrays", "store.tls",
                     "store.local_token")  # fmt: skip


def test_the_client_uses_only_the_stores_shared_vocabulary() -> None:
    for module, names in imports("client").items():
        for name in names:
            if name.split(".")[0] == "store" and name != "store":
                assert name.startswith(CLIENT_MAY_IMPORT), f"{module} imports {name}"


def test_only_client_torch_imports_torch() -> None:
    for module, names in imports("client").items():
        if not module.startswith("client/torch/"):
            assert not any(n.split(".")[0] == "torch" for n in names), module


def test_the_training_pipeline_has_no_import_cycle() -> None:
    modules = imports("client")
    for module in ("client/torch/pipeline.py", "client/torch/push_log.py"):
        assert not any(n.startswith(("client.torch.embeddings", "client.torch.prefetch"))
                       for n in modules[module]), module  # fmt: skip


# Libraries whose private names the code must use (torch: when a backward pass ends).
OUTSIDE_PRIVATES = ("torch", "argparse")


@pytest.mark.parametrize("package", ["client", "store", "engram_cli"])
def test_no_module_reaches_into_another_objects_private_names(package: str) -> None:
    for path in sorted((REPO_ROOT / package).rglob("*.py")):
        if "_proto" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Attribute) or not node.attr.startswith("_"):
                continue
            if node.attr.startswith("__"):
                continue
            root = node.value
            while isinstance(root, ast.Attribute):
                root = root.value
            if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
                continue
            assert isinstance(root, ast.Name) and root.id in OUTSIDE_PRIVATES, (
                f"{path.relative_to(REPO_ROOT)}:{node.lineno}: {ast.unparse(node)}"
            )


@pytest.mark.parametrize(
    "kind", [k for k, _ in errors.STATUS_OF_KIND if issubclass(k, errors.StoreError)]
)
def test_each_error_kind_crosses_the_wire_as_itself(kind: type[errors.StoreError]) -> None:
    status = errors.status_of(kind("x"))
    assert status is not None
    assert errors.kind_of(status) is kind

    class Failed(grpc.RpcError):  # type: ignore[misc]
        def code(self) -> grpc.StatusCode:
            return grpc.StatusCode[status]

        def details(self) -> str:
            return "why"

    raised = from_rpc_error(Failed(), "host:1")
    if kind is errors.TableFormatError:
        assert type(raised) is EngramClientError  # data loss: the base kind
    else:
        assert isinstance(raised, kind)
    assert isinstance(raised, errors.StoreError)
    assert str(raised) == f"host:1: {status}: why"


def test_the_engines_own_refusals_are_kinds_of_the_tree(tmp_path: Path) -> None:
    table = Table.create(tmp_path / "t.engram", 10, 2)
    with pytest.raises(errors.OutOfRangeError, match=r"keys\[0\] = 10 is out of range"):
        table.gather(np.array([10], dtype=np.uint64))
    with pytest.raises(errors.InvalidArgumentError, match="threads must be positive"):
        _native.set_thread_count(0)
    assert errors.status_of(errors.OutOfRangeError("x")) == "OUT_OF_RANGE"
    assert issubclass(errors.OutOfRangeError, IndexError)
    assert issubclass(errors.InvalidArgumentError, ValueError)


@pytest.mark.parametrize(
    "kind", [errors.StoreError, errors.TableFormatError, errors.OutOfRangeError]
)
def test_the_engines_errors_survive_pickling(kind: type[errors.StoreError]) -> None:
    # Worker processes (torch.multiprocessing, DataLoader) hand exceptions back pickled.
    copy = pickle.loads(pickle.dumps(kind("why")))
    assert type(copy) is kind
    assert str(copy) == "why"


def test_the_clients_and_the_configs_errors_survive_pickling_whole() -> None:
    # Before, a client error came back without its address and status code, and a
    # ConfigError did not come back at all (its __init__ takes two arguments).
    failed = ShardUnavailableError("no answer", "host:1", grpc.StatusCode.UNAVAILABLE)
    copy = pickle.loads(pickle.dumps(failed))
    assert type(copy) is ShardUnavailableError
    assert (str(copy), copy.address, copy.code) == ("host:1: no answer", "host:1", failed.code)
    config = pickle.loads(pickle.dumps(ConfigError("port", "must be in 0..65535")))
    assert (config.field, config.message, str(config)) == (
        "port",
        "must be in 0..65535",
        "port must be in 0..65535",
    )
