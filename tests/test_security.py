"""Authentication and TLS: bearer tokens with read-write and read-only roles, checked by the
daemon; TLS with a server certificate and optionally client certificates, made at test time;
and no unauthenticated daemon on a non-loopback address unless asked for."""

from __future__ import annotations

import datetime
import ipaddress
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from daemon import daemon_thread
from grpc_health.v1 import health_pb2, health_pb2_grpc

from client import (
    DataParallelStepError,
    EngramClient,
    NotPermittedError,
    RequestTooLargeError,
    RetryPolicy,
    Security,
    ShardUnavailableError,
    SyncStep,
    TokenRefusedError,
)
from engram_cli import main
from store.config import ServeConfig
from store.server import StartupError, serve
from store.tls import TlsFileError

WRITER, READER = "w" * 24 + "-writer", "r" * 24 + "-reader"


@pytest.fixture
def tokens_file(tmp_path: Path) -> Path:
    path = tmp_path / "tokens"
    path.write_text(f"# who may call\nread-write {WRITER}\nread-only  {READER}  # dashboards\n")
    return path


@pytest.fixture
def address(tmp_path: Path, tokens_file: Path) -> Iterator[str]:
    with daemon_thread(tmp_path / "data", auth_tokens_file=str(tokens_file)) as daemon:
        yield daemon.address


def client(address: str, token: str | None, **tls: str) -> EngramClient:
    return EngramClient(
        address,
        security=Security(token, **tls),
        timeout_s=5,
        retry=RetryPolicy(max_attempts=2, initial_backoff_s=0.05),
    )


def test_calls_without_a_valid_token_are_refused(address: str) -> None:
    for token in (None, "x" * 30, WRITER[:-1]):
        with client(address, token) as anonymous, pytest.raises(TokenRefusedError) as error:
            anonymous.tables()
        assert error.value.code == grpc.StatusCode.UNAUTHENTICATED
    # Probes need no token.
    with grpc.insecure_channel(address) as channel:
        answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert answer.status == health_pb2.HealthCheckResponse.SERVING


def test_a_read_only_token_reads_and_changes_nothing(address: str) -> None:
    keys = np.array([1, 2], np.uint64)
    with client(address, WRITER) as writer, client(address, READER) as reader:
        writer.create_table("t", 100, 4, optimizer="adam")
        writer.push("t", keys, np.ones((2, 4), np.float32))
        writer.checkpoint()
        np.testing.assert_array_equal(reader.lookup("t", keys), writer.lookup("t", keys))
        assert reader.describe("t").step == 1 and reader.tables() == ["t"]
        refused: dict[str, Callable[[], object]] = {
            "Push": lambda: reader.push("t", keys, np.ones((2, 4), np.float32)),
            "CreateTable": lambda: reader.create_table("u", 10, 4),
            "DropTable": lambda: reader.drop_table("t"),
            "TuneTable": lambda: reader.tune_table("t", lr=1.0),
            "Checkpoint": reader.checkpoint,
            "Batch with pushes": lambda: reader.batch([("t", keys, np.ones((2, 4), np.float32))]),
            "Restore": reader.restore,
        }
        for method, call in refused.items():
            with pytest.raises(NotPermittedError, match=f"may not call {method}"):
                call()
        assert writer.describe("t").step == 1 and writer.tables() == ["t"]


def test_the_command_line_sends_its_token(
    address: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["tables", "--address", address]) == 3
    assert "UNAUTHENTICATED" in capsys.readouterr().err
    assert main(["tables", "--address", address, "--token", WRITER]) == 0
    monkeypatch.setenv("ENGRAM_STORE_TOKEN", READER)
    assert main(["tables", "--address", address]) == 0
    assert main(["create-table", "t", "--rows", "4", "--dim", "2", "--address", address]) == 3
    assert "PERMISSION_DENIED" in capsys.readouterr().err


def test_no_daemon_serves_a_network_address_without_tokens_unless_told(tmp_path: Path) -> None:
    exposed = ServeConfig(data_dir=str(tmp_path / "data"), host="0.0.0.0", port=0)
    with pytest.raises(StartupError, match=r"refusing to serve 0\.0\.0\.0 without tokens"):
        serve(exposed)
    bad = tmp_path / "bad-tokens"
    bad.write_text("admin abcdefghijklmnopqrstuvwxyz\n")
    with pytest.raises(StartupError, match=r"bad-tokens:1: expected `ROLE TOKEN`"):
        serve(ServeConfig(data_dir=str(tmp_path / "data"), auth_tokens_file=str(bad)))
    bad.write_text("read-write short\n")
    with pytest.raises(StartupError, match="at least 16 characters"):
        serve(ServeConfig(data_dir=str(tmp_path / "data"), auth_tokens_file=str(bad)))


# TLS ------------------------------------------------------------------------------------


Issuer = tuple[x509.Name, ec.EllipticCurvePrivateKey]


def _certificate(
    name: str, key: ec.EllipticCurvePrivateKey, issuer: Issuer | None, ca: bool
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    issuer_name, issuer_key = issuer or (subject, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    return builder.sign(issuer_key, hashes.SHA256())


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A CA, a daemon certificate for 127.0.0.1 and a client certificate, as PEM files."""
    root = tmp_path_factory.mktemp("pki")
    files: dict[str, str] = {}

    def write(name: str, data: bytes) -> None:
        (root / name).write_bytes(data)
        files[name] = str(root / name)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _certificate("engram test CA", ca_key, None, ca=True)
    write("ca.pem", ca.public_bytes(serialization.Encoding.PEM))
    for who in ("daemon", "client"):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _certificate(who, key, (ca.subject, ca_key), ca=False)
        write(f"{who}.pem", cert.public_bytes(serialization.Encoding.PEM))
        write(
            f"{who}-key.pem",
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
        )
    return files


def test_tls_with_the_daemons_ca(tmp_path: Path, pki: dict[str, str]) -> None:
    tls = {"tls_cert": pki["daemon.pem"], "tls_key": pki["daemon-key.pem"]}
    with daemon_thread(tmp_path / "data", **tls) as daemon:
        with client(daemon.address, None, tls_ca=pki["ca.pem"]) as secure:
            secure.create_table("t", 10, 4)
            assert secure.tables() == ["t"]
        with client(daemon.address, None) as plain, pytest.raises(ShardUnavailableError):
            plain.tables()


@pytest.fixture
def junk(tmp_path: Path) -> Path:
    """A file that is not PEM."""
    path = tmp_path / "junk.pem"
    path.write_text("not a certificate\n")
    return path


def test_tls_files_that_are_not_a_certificate_and_its_key_stop_the_start(
    tmp_path: Path, pki: dict[str, str], junk: Path
) -> None:
    data = str(tmp_path / "data")
    daemon_cert, daemon_key = pki["daemon.pem"], pki["daemon-key.pem"]
    private_key = serialization.load_pem_private_key(Path(daemon_key).read_bytes(), None)
    encrypted = tmp_path / "encrypted-key.pem"
    encrypted.write_bytes(
        private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"a passphrase"),
        )
    )
    cases = [
        # Before, each failed only at bind: "cannot listen on 127.0.0.1:0".
        (str(junk), str(junk), None, "not a PEM certificate chain"),
        (daemon_cert, pki["client-key.pem"], None, "KEY_VALUES_MISMATCH"),
        (daemon_cert, daemon_key, str(junk), "--tls-client-ca .* holds no PEM certificate"),
        # Refused, never prompted for (gRPC takes no passphrase).
        (daemon_cert, str(encrypted), None, "its unencrypted private key"),
    ]
    for cert, key, client_ca, message in cases:
        config = ServeConfig(
            data_dir=data, port=0, tls_cert=cert, tls_key=key, tls_client_ca=client_ca
        )
        with pytest.raises(StartupError, match=message):
            serve(config)
    assert not (tmp_path / "data").exists()


def test_a_followers_tls_files_stop_the_start_when_unusable(
    tmp_path: Path, pki: dict[str, str], junk: Path
) -> None:
    data = str(tmp_path / "data")
    ca, cert, key = pki["ca.pem"], pki["client.pem"], pki["client-key.pem"]
    cases = [
        # Before, the daemon started and logged each failed catch-up.
        (str(junk), None, None, "--follow-tls-ca .*junk.pem holds no PEM certificate"),
        (str(tmp_path / "missing.pem"), None, None, "--follow-tls-ca .* cannot be read"),
        # Before, this one was silently ignored: a certificate, with TLS off.
        (None, cert, key, r"\(--follow-tls-cert\) needs --follow-tls-ca"),
        # Before, gRPC aborted the daemon: "Check failed: private_key != nullptr".
        (ca, cert, None, "--follow-tls-cert needs --follow-tls-key"),
        (ca, cert, pki["daemon-key.pem"], "KEY_VALUES_MISMATCH"),
    ]
    for follow_ca, follow_cert, follow_key, message in cases:
        config = ServeConfig(
            data_dir=data,
            port=0,
            follow="127.0.0.1:1",
            follow_tls_ca=follow_ca,
            follow_tls_cert=follow_cert,
            follow_tls_key=follow_key,
        )
        with pytest.raises(StartupError, match="cannot use the leader's TLS files: .*" + message):
            serve(config)
    assert not (tmp_path / "data").exists()


def test_a_clients_tls_files_are_refused_naming_them(
    tmp_path: Path, pki: dict[str, str], junk: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cases: list[tuple[dict[str, str], str]] = [
        # Before, every call failed as if no daemon answered (UNAVAILABLE).
        ({"tls_ca": str(junk)}, r"tls_ca \(--tls-ca, ENGRAM_STORE_TLS_CA\) .* no PEM"),
        ({"tls_ca": str(tmp_path / "missing")}, "tls_ca .* cannot be read"),
        ({"tls_ca": pki["ca.pem"], "tls_key": pki["client-key.pem"]}, "tls_key .* needs tls_cert"),
        (
            {"tls_ca": pki["ca.pem"], "tls_cert": str(junk), "tls_key": pki["client-key.pem"]},
            "tls_cert .* are not a PEM certificate chain",
        ),
    ]
    for files, message in cases:
        with pytest.raises(TlsFileError, match=message):
            client("127.0.0.1:1", None, **files)
    assert issubclass(TlsFileError, ValueError)
    assert main(["tables", "--address", "127.0.0.1:1", "--tls-ca", str(junk)]) == 3
    assert "--tls-ca" in capsys.readouterr().err


def test_mutual_tls_refuses_clients_without_a_certificate(
    tmp_path: Path, pki: dict[str, str], tokens_file: Path
) -> None:
    tls = {
        "tls_cert": pki["daemon.pem"],
        "tls_key": pki["daemon-key.pem"],
        "tls_client_ca": pki["ca.pem"],
    }
    with daemon_thread(tmp_path / "data", auth_tokens_file=str(tokens_file), **tls) as daemon:
        mine = {"tls_cert": pki["client.pem"], "tls_key": pki["client-key.pem"]}
        with client(daemon.address, WRITER, tls_ca=pki["ca.pem"], **mine) as trusted:
            assert trusted.tables() == []
        with (
            client(daemon.address, WRITER, tls_ca=pki["ca.pem"]) as stranger,
            pytest.raises(ShardUnavailableError),
        ):
            stranger.tables()


@pytest.mark.serial  # timing-sensitive: run alone
def test_calls_beyond_the_concurrency_limit_are_refused_at_once(tmp_path: Path) -> None:
    """Two shares of a step wait for a third rank, holding two calls: a third call is
    refused (RESOURCE_EXHAUSTED) instead of queued."""
    with (
        daemon_thread(tmp_path / "data", max_concurrent_requests=2) as daemon,
        client(daemon.address, None) as admin,
    ):
        admin.create_table("t", 10, 4)
        keys, grads = np.array([1], np.uint64), np.ones((1, 4), np.float32)
        waiting = [client(daemon.address, None) for _ in range(2)]
        with ThreadPoolExecutor(2) as pool:
            shares = [
                pool.submit(c.push, "t", keys, grads, sync=SyncStep(1, rank, 3, timeout_s=3))
                for rank, c in enumerate(waiting)
            ]
            time.sleep(1)
            with pytest.raises(RequestTooLargeError, match="RESOURCE_EXHAUSTED"):
                admin.tables()
            for share in shares:
                with pytest.raises(DataParallelStepError):
                    share.result()
        for c in waiting:
            c.close()
        assert admin.tables() == ["t"]
