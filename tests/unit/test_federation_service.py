"""The federation servicer's own part of a download, on a real server without gRPC: the
whole call through real daemons is tested in tests/integration."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import grpc
import pytest

from flcore.federation import MachineInfo
from flcore.identity import KIND_CLIENT, identity_from_certificate
from flcore.proto.gen import flstack_federation_pb2 as fed_pb2
from flserverd.federation_service import FederationService
from flserverd.rpc import Context
from flserverd.server import FLServer
from flserverd.transfer import client_app_dir
from provision import pki
from tests.unit.test_exchange import RUN, on_server, train
from tests.unit.test_folders import open_files_under


def _site_a() -> pki.CertifiedKey:
    now = datetime.now(UTC)
    ca = pki.create_ca("p", "org", "ecdsa-p256", 30, now)
    return pki.issue(ca, pki.Subject("site-a", "org", KIND_CLIENT), "ecdsa-p256", 30, now)


SITE_A = _site_a()
"""A site's key and certificate, as its kit holds them."""


def training_for_site_a(server: FLServer) -> tuple[FederationService, str]:
    """Run 1 training on ``server``, site-a logged in; the servicer and site-a's token."""
    train(server, num_rounds=2)
    login = server.login(identity_from_certificate(SITE_A.cert), "", MachineInfo())
    return FederationService(server), login.token


class Aborted(Exception):
    """What grpc's ``context.abort`` raises, for this stand-in."""


class _Call:
    """A call's context, as gRPC gives the servicer: its peer's certificate, and what the
    servicer writes and why it ended the call."""

    def __init__(self, cert_pem: bytes) -> None:
        self._auth = {"x509_pem_cert": [cert_pem]}
        self.written: list[Any] = []
        self.aborted: tuple[grpc.StatusCode, str] | None = None

    def auth_context(self) -> dict[str, Any]:
        return self._auth

    async def write(self, message: Any) -> None:
        self.written.append(message)

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.aborted = (code, details)
        raise Aborted(details)


class _PeerThatDoesNotRead(_Call):
    """A call whose peer never reads: every write waits for good."""

    async def write(self, message: Any) -> None:
        await super().write(message)
        await asyncio.Event().wait()


def test_a_download_whose_manifest_is_never_read_is_given_up_after_the_stall_limit(
    tmp_path: Path,
) -> None:
    """The manifest was written outside the stall watch, so a peer that never read a large
    one held its call (and the model's file) until it hung up."""

    async def scenario(server: FLServer) -> None:
        service, token = training_for_site_a(server)
        service.exchange.downloads.stall_s = 0.2
        context = _PeerThatDoesNotRead(pki.cert_pem(SITE_A.cert))
        request = fed_pb2.ModelRequest(
            token=token, run_number=RUN, round=0, kind=fed_pb2.MODEL_KIND_GLOBAL
        )
        with pytest.raises(Aborted):
            await asyncio.wait_for(service.GetModel(request, cast(Context, context)), 10)
        assert [m.WhichOneof("body") for m in context.written] == ["manifest"]
        assert context.aborted is not None
        code, details = context.aborted
        assert code == grpc.StatusCode.UNAVAILABLE
        assert details == (
            "download of round_0.safetensors to site-a: nothing moved for 0.2s; given up"
        )

    on_server(tmp_path, scenario)


def test_a_download_to_a_site_revoked_meanwhile_ends_at_its_next_chunk(tmp_path: Path) -> None:
    """Its call was let in before the revocation, and went on sending the model."""

    async def scenario(server: FLServer) -> None:
        service, token = training_for_site_a(server)

        class RevokedAfterTheManifest(_Call):
            async def write(self, message: Any) -> None:
                await super().write(message)
                if len(self.written) == 2:  # the manifest and a first chunk went out
                    server.revocations.revoke("site-a", "admin@lead.org")
                    server.enforce_revocations()

        context = RevokedAfterTheManifest(pki.cert_pem(SITE_A.cert))
        request = fed_pb2.ModelRequest(
            token=token, run_number=RUN, round=0, kind=fed_pb2.MODEL_KIND_GLOBAL
        )
        with pytest.raises(Aborted):
            await asyncio.wait_for(service.GetModel(request, cast(Context, context)), 10)
        assert [m.WhichOneof("body") for m in context.written] == ["manifest", "chunk"]
        assert context.aborted is not None
        code, details = context.aborted
        assert code == grpc.StatusCode.PERMISSION_DENIED
        assert details.startswith("site-a was revoked on this server by admin@lead.org")

    on_server(tmp_path, scenario)


def deployed_app(server: FLServer) -> Path:
    """An app of two config files deployed to the clients of run 1."""
    folder = client_app_dir(server.store, RUN, "digits")
    (folder / "config").mkdir(parents=True)
    (folder / "config" / "config_fed_client.json").write_text("{}")
    (folder / "config" / "config_train.json").write_text("{}")
    return folder


def test_an_app_download_to_a_site_revoked_meanwhile_ends_at_its_next_chunk(
    tmp_path: Path,
) -> None:
    """The app's half of the rule above: the first file went out, the second does not."""

    async def scenario(server: FLServer) -> None:
        service, token = training_for_site_a(server)
        deployed_app(server)

        class RevokedAfterTheFirstFile(_Call):
            async def write(self, message: Any) -> None:
                await super().write(message)
                server.revocations.revoke("site-a", "admin@lead.org")
                server.enforce_revocations()

        context = RevokedAfterTheFirstFile(pki.cert_pem(SITE_A.cert))
        request = fed_pb2.AppRequest(token=token, run_number=RUN, app="digits")
        with pytest.raises(Aborted):
            await asyncio.wait_for(service.GetApp(request, cast(Context, context)), 10)
        assert [chunk.path for chunk in context.written] == ["config/config_fed_client.json"]
        assert context.aborted is not None
        code, details = context.aborted
        assert code == grpc.StatusCode.PERMISSION_DENIED
        assert details.startswith("site-a was revoked on this server by admin@lead.org")

    on_server(tmp_path, scenario)


def test_app_downloads_a_site_does_not_read_are_given_up_one_after_another(
    tmp_path: Path,
) -> None:
    """A site that opened app downloads and read none kept each for as long as it liked,
    with its file open and its buffers: now they go one after another like its model
    downloads, none holds a file while it waits for the site, and each is given up after
    the stall limit."""

    async def scenario(server: FLServer) -> None:
        service, token = training_for_site_a(server)
        folder = deployed_app(server)
        service.exchange.downloads.stall_s = 0.2
        request = fed_pb2.AppRequest(token=token, run_number=RUN, app="digits")
        held: list[list[Path]] = []

        class Stalled(_PeerThatDoesNotRead):
            async def write(self, message: Any) -> None:
                held.append(open_files_under(folder))
                await super().write(message)

        stalled = Stalled(pki.cert_pem(SITE_A.cert))

        class Next(_Call):
            async def write(self, message: Any) -> None:
                assert stalled.aborted is not None, "a site's second download went at once"
                await super().write(message)

        following = Next(pki.cert_pem(SITE_A.cert))
        first = asyncio.ensure_future(service.GetApp(request, cast(Context, stalled)))
        second = asyncio.ensure_future(service.GetApp(request, cast(Context, following)))
        with pytest.raises(Aborted):
            await asyncio.wait_for(first, 10)
        await asyncio.wait_for(second, 10)
        assert held == [[]]
        assert stalled.aborted == (
            grpc.StatusCode.UNAVAILABLE,
            "download of app digits to site-a: nothing moved for 0.2s; given up",
        )
        assert [chunk.path for chunk in following.written] == [
            "config/config_fed_client.json",
            "config/config_train.json",
        ]
        assert following.aborted is None

    on_server(tmp_path, scenario)
