"""Mutual TLS for every gRPC connection, and the channel limits that go with it.

Both sides present certificates from the project CA; there is no insecure
mode. Message size limits are small on purpose: models and apps move as
streams of chunks (see ``flcore.tensorfile.CHUNK_BYTES``), so a message above
a few megabytes can only be a mistake or an attack.

TLS versions are gRPC's: its SSL credentials accept TLS 1.2 and 1.3 only
(1.3 when both ends can) and verify the peer against the project CA alone,
with no fallback (``tests/integration/test_transport.py`` proves both).
The server also bounds what a peer can hold before it is anyone: a TLS
handshake must end within :data:`HANDSHAKE_TIMEOUT_MS`, a connection that
makes no call for :data:`IDLE_CONNECTION_MS` is closed, and each port takes
at most :func:`connection_cap` connections, so that a flood of half-open
connections is shed in seconds and can never run the daemon out of file
descriptors (which would also stop it writing checkpoints).
"""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import grpc
from cryptography import x509

from flcore.logs import one_line
from flcore.schema import ConfigError
from flcore.startup import check_private_key

MAX_MESSAGE_BYTES = 4 * 1024 * 1024

# A fixed 4 MiB flow-control window per stream instead of gRPC's BDP probing,
# which grew windows until a server with 8 clients uploading a 100 MB model at
# once peaked at 575 MB (docs/benchmarks.md). This is a client's receive window
# (what the server may send it: downloads); 4 MiB fills a 300 Mbit/s link at
# 100 ms round trip and costs each client one model transfer's buffer.
FLOW_CONTROL: list[tuple[str, int]] = [
    ("grpc.http2.bdp_probe", 0),
    ("grpc.http2.lookahead_bytes", 4 * 1024 * 1024),
]

# What a client may send the server on one stream before the server reads it: the
# server's receive window. gRPC's C core keeps what arrived in its own buffers until
# Python asks for the next message, so with 32 sites uploading at once and the server's
# Python behind, each upload held ~7 MB there at a 4 MiB window (heaptrack,
# docs/benchmarks.md §12). gRPC opens the window for a whole message whenever the
# server waits for one, so a link still carries 1 MiB + this per round trip while the
# server keeps up; when it does not, the senders wait instead of its memory growing.
# One chunk (1 MiB), not less: 256 KiB held the same memory with 8 sites and cost ~15 %
# more time per round in window updates (docs/benchmarks.md §12).
SERVER_FLOW_CONTROL: list[tuple[str, int]] = [
    ("grpc.http2.bdp_probe", 0),
    ("grpc.http2.lookahead_bytes", 1024 * 1024),
]

# A link that swallows packets without a reset (a dead NAT entry, a cable pulled
# somewhere) is noticed by keepalive pings: each side pings after KEEPALIVE_TIME_S and
# closes the connection when no answer came KEEPALIVE_TIMEOUT_S later. Any bytes
# received also count as an answer (gRPC clears the ping's timer on data), so a slow
# link that keeps moving is never cut, however long a transfer takes. A dead link is
# therefore noticed within STALL_DETECTED_S by both the client and the server.
KEEPALIVE_TIME_S = 10
KEEPALIVE_TIMEOUT_S = 5
STALL_DETECTED_S = KEEPALIVE_TIME_S + KEEPALIVE_TIMEOUT_S
KEEPALIVE: list[tuple[str, int]] = [
    ("grpc.keepalive_time_ms", KEEPALIVE_TIME_S * 1000),
    ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_S * 1000),
    # gRPC >= 1.6x times every ping, the keepalive's too, with this (default 60 s).
    ("grpc.http2.ping_timeout_ms", KEEPALIVE_TIMEOUT_S * 1000),
    ("grpc.keepalive_permit_without_calls", 1),
]

CHANNEL_OPTIONS: list[tuple[str, int]] = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    *KEEPALIVE,
    ("grpc.http2.max_pings_without_data", 0),
    # Reconnect quickly after a server restart; the client's uplink decides
    # when to give up (the retry window).
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2_000),
    *FLOW_CONTROL,
]

HANDSHAKE_TIMEOUT_MS = 5_000
IDLE_CONNECTION_MS = 30_000
MAX_STREAMS_PER_CONNECTION = 32
"""A client daemon uses a few at once (control stream, a model each way, metrics)."""
RESERVED_FDS = 512
"""File descriptors kept for files (models, spools, the state database) and children."""
MAX_CONNECTIONS_PER_PORT = 8192


def connection_cap(open_files: int) -> int:
    """Connections one port takes, for a process allowed ``open_files`` descriptors: the
    two ports together leave :data:`RESERVED_FDS` free."""
    return max(64, min(MAX_CONNECTIONS_PER_PORT, (open_files - RESERVED_FDS) // 2))


def server_options(open_files: int) -> list[tuple[str, int]]:
    """The server's channel options, for a process allowed ``open_files`` descriptors."""
    return [
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        *KEEPALIVE,
        # Clients ping every KEEPALIVE_TIME_S; the server must not count that as abuse
        # (three pings sooner than this and it would close the connection).
        ("grpc.http2.min_ping_interval_without_data_ms", KEEPALIVE_TIME_S * 1000 // 2),
        ("grpc.so_reuseport", 0),
        ("grpc.server_handshake_timeout_ms", HANDSHAKE_TIMEOUT_MS),
        ("grpc.max_connection_idle_ms", IDLE_CONNECTION_MS),
        ("grpc.max_concurrent_streams", MAX_STREAMS_PER_CONNECTION),
        ("grpc.max_allowed_incoming_connections", connection_cap(open_files)),
        *SERVER_FLOW_CONTROL,
    ]


class NamesTlsFiles(Protocol):
    """A startup config naming the PEM files (fed_server.json, fed_client.json, ...)."""

    @property
    def ssl_root_cert(self) -> str:
        """The project CA certificate."""

    @property
    def ssl_cert(self) -> str:
        """The participant's certificate."""

    @property
    def ssl_private_key(self) -> str:
        """The participant's private key."""


@dataclass(frozen=True)
class TlsFiles:
    """The three PEM files of a participant: project CA, own certificate, own key."""

    root_cert: Path
    cert: Path
    private_key: Path

    @classmethod
    def named_by(cls, config: NamesTlsFiles, startup_dir: Path) -> TlsFiles:
        """The files a startup config names, relative paths being inside ``startup/``."""
        return cls(
            *(
                startup_dir / name
                for name in (config.ssl_root_cert, config.ssl_cert, config.ssl_private_key)
            )
        )

    def read(self) -> tuple[bytes, bytes, bytes]:
        """Read all three, saying which one is missing or unreadable, or a key others may read."""
        check_private_key(self.private_key)
        out = []
        for label, path in (
            ("root certificate", self.root_cert),
            ("certificate", self.cert),
            ("private key", self.private_key),
        ):
            try:
                out.append(path.read_bytes())
            except OSError as exc:
                raise ConfigError(f"cannot read the {label} {path}: {exc.strerror}") from None
        return out[0], out[1], out[2]


def server_credentials(files: TlsFiles) -> grpc.ServerCredentials:
    """Credentials that make the server require and verify a client certificate."""
    root, cert, key = files.read()
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=root, require_client_auth=True
    )


def channel_credentials(files: TlsFiles) -> grpc.ChannelCredentials:
    """Credentials that make a client verify the server and present its own certificate."""
    root, cert, key = files.read()
    return grpc.ssl_channel_credentials(
        root_certificates=root, private_key=key, certificate_chain=cert
    )


# What OpenSSL says, inside gRPC's UNAVAILABLE details, when the server's certificate
# does not chain to the CA the client trusts: the server belongs to another project
# (or the host/port is some other TLS service). Retrying cannot cure it.
_FOREIGN_ISSUER = (
    "unable to get local issuer certificate",
    "unable to get issuer certificate",
    "self signed certificate in certificate chain",
    "self-signed certificate in certificate chain",
)
# What gRPC says when the certificate chains to the project CA but is not for the host name
# dialled (gRPC >= 1.6x; older ones said the peer name "is not in peer certificate"): the
# kit names the server by a name its certificate does not have. Retrying cannot cure it.
_WRONG_NAME = ("hostname verification check failed", "is not in peer certificate")
NAMES_TIMEOUT_S = 3.0
"""How long the look at a misnamed server's certificate may take (it only words an error)."""
MAX_NAMES = 8
"""The most names of a misnamed server's certificate an error lists."""
MAX_NAME_CHARS = 253
"""The longest a DNS name can be: longer is cut."""


def foreign_server(exc: grpc.aio.AioRpcError, target: str) -> str | None:
    """The sentence for a server this kit cannot use however often it retries: one whose
    certificate the kit's project CA did not issue, or one whose certificate is not for the
    host name the kit dials; None when the failure is something else (a server down is
    retried, not this). For a misnamed server it connects once more, for at most
    :data:`NAMES_TIMEOUT_S`, to say what the certificate is for."""
    if exc.code() != grpc.StatusCode.UNAVAILABLE:
        return None
    said = (exc.details() or "").lower()
    if any(words in said for words in _WRONG_NAME):
        host = split_target(target)[0]
        names = certificate_names(target)
        found = f"a certificate for {', '.join(names)}, not" if names else "a certificate not"
        return (
            f"the server at {target} presents {found} for {host}, the host name this kit "
            "dials: the kit names the server wrongly (or the server runs with a kit for "
            "another name); provision the kits with the host name the server's certificate "
            "is for"
        )
    if "certificate_verify_failed" not in said or not any(
        words in said for words in _FOREIGN_ISSUER
    ):
        return None
    return (
        f"the server at {target} presents a certificate not issued by this kit's project "
        "CA: this is the wrong kit for this server, or the wrong host/port"
    )


def split_target(target: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port``) as host and port."""
    host, _, port = target.rpartition(":")
    return host.removeprefix("[").removesuffix("]"), int(port)


def certificate_names(target: str) -> list[str]:
    """The host names and addresses the certificate of the server at ``target`` is for,
    read without verifying it (only to word an error: nothing is sent but a handshake);
    empty when they cannot be read."""
    host, port = split_target(target)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.minimum_version = ssl.TLSVersion.TLSv1_3  # the certificate before ours is asked
    context.set_alpn_protocols(["h2"])
    try:
        with (
            socket.create_connection((host, port), timeout=NAMES_TIMEOUT_S) as raw,
            context.wrap_socket(raw, server_hostname=host) as tls,
        ):
            der = tls.getpeercert(binary_form=True)
    except (OSError, ValueError):
        return []
    if der is None:
        return []
    try:
        names = x509.load_der_x509_certificate(der).extensions.get_extension_for_class(
            x509.SubjectAlternativeName
        )
    except (ValueError, x509.ExtensionNotFound):
        return []
    # The peer wrote them, unverified: bounded, and each one line, before a log shows them.
    return [one_line(str(name.value), MAX_NAME_CHARS) for name in names.value][:MAX_NAMES]
