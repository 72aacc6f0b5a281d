"""The Prometheus endpoint a daemon serves when its site turns it on (``metrics_port``).

Off by default, and set only in ``local/fed_server.json`` or
``local/fed_client.json``: opening a listening port on a machine is the
decision of the people who run it, never of a kit. ``prometheus_client`` is
imported when the endpoint starts, so a daemon without one starts as fast
as before.

Plain HTTP on 127.0.0.1 unless the site says otherwise. What the endpoint
tells (which sites are online, how far a run is, how much data moved) is
not secret the way tokens and keys are, but it describes a hospital's
activity, so by default only a scraper on the same machine (a local
Prometheus or agent that forwards over its own authenticated channel)
reads it. A site that scrapes from another machine names the address to
bind (``metrics_host``) and, unless that network is its own, a certificate
and key (``metrics_tls_cert``, ``metrics_tls_key``) and optionally the CA
its scrapers' client certificates must come from
(``metrics_tls_client_ca``). The endpoint accepts no input but the path it
is asked for, and never shows tokens, paths or log text.
"""

from __future__ import annotations

import ipaddress
import logging
import ssl
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flcore.certlife import CertLife
from flcore.schema import ConfigError
from flcore.startup import LOCAL_DIR, ClientStartup, ServerStartup, check_private_key

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EndpointSettings:
    """Where the metrics endpoint listens and with which certificate (None: plain HTTP)."""

    host: str
    port: int
    cert: Path | None = None
    key: Path | None = None
    client_ca: Path | None = None

    @property
    def url(self) -> str:
        """What a scraper asks for, for the log."""
        scheme = "https" if self.cert else "http"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}/metrics"

    @property
    def loopback(self) -> bool:
        """Whether only this machine can reach the endpoint."""
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


def endpoint_settings(
    startup: ServerStartup | ClientStartup, workspace: Path, file_name: str
) -> EndpointSettings | None:
    """The endpoint a daemon's config asks for (None: none), its files checked;
    ConfigError says what is wrong in ``local/<file_name>``."""
    if not startup.metrics_port:
        for name in ("metrics_tls_cert", "metrics_tls_key", "metrics_tls_client_ca"):
            if getattr(startup, name):
                raise ConfigError(f"{LOCAL_DIR}/{file_name}: {name} is set but metrics_port is not")
        return None
    local = workspace / LOCAL_DIR

    def named(name: str) -> Path | None:
        value = str(getattr(startup, name))
        if not value:
            return None
        path = local / value  # an absolute path stays what it is
        if not path.is_file():
            raise ConfigError(f"{LOCAL_DIR}/{file_name}: {name} {path} is not a readable file")
        return path

    cert, key, client_ca = (
        named("metrics_tls_cert"),
        named("metrics_tls_key"),
        named("metrics_tls_client_ca"),
    )
    if (cert is None) != (key is None):
        raise ConfigError(
            f"{LOCAL_DIR}/{file_name}: metrics_tls_cert and metrics_tls_key go together "
            "(the endpoint's certificate and its private key)"
        )
    if client_ca is not None and cert is None:
        raise ConfigError(
            f"{LOCAL_DIR}/{file_name}: metrics_tls_client_ca needs metrics_tls_cert and "
            "metrics_tls_key: client certificates are checked only over TLS"
        )
    if key is not None:
        check_private_key(key)
    return EndpointSettings(startup.metrics_host, startup.metrics_port, cert, key, client_ca)


class Endpoint:
    """A running metrics endpoint: an HTTP(S) server in a thread of its own."""

    def __init__(self, server: WSGIServer, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread

    @property
    def port(self) -> int:
        """The port it listens on."""
        return int(self._server.server_address[1])

    def close(self) -> None:
        """Stop serving and release the port."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


def status_family(name: str, whose: str, statuses: Iterable[str], current: str) -> Any:
    """A status as Prometheus wants an enumeration: one series per status word, 1 for the
    current one (so a dashboard shows it and an alert matches it by name)."""
    from prometheus_client.core import GaugeMetricFamily  # with the endpoint only

    family = GaugeMetricFamily(
        name, f"{whose} training status (1 for the current one)", labels=["status"]
    )
    for word in statuses:
        family.add_metric([word], 1.0 if word == current else 0.0)
    return family


class _Certificates:
    """When the kit's certificates end, for an alert well before they do (the daemon warns in
    its log from 30 days before; an alert can look further ahead)."""

    def __init__(self, lives: Sequence[CertLife]) -> None:
        self._lives = lives

    def collect(self) -> Iterator[Any]:
        """One series per certificate: ``own`` and ``ca``."""
        from prometheus_client.core import GaugeMetricFamily  # with the endpoint only

        family = GaugeMetricFamily(
            "flstack_certificate_expiry_timestamp_seconds",
            "When the kit's certificate (own) and the project CA (ca) end, in Unix time",
            labels=["certificate"],
        )
        for label, life in zip(("own", "ca"), self._lives, strict=True):
            family.add_metric([label], life.not_after.timestamp())
        yield family


def exposure(settings: EndpointSettings) -> str | None:
    """How anyone who reaches a non-loopback endpoint may read it (None: only this machine,
    or scrapers with a certificate of ``metrics_tls_client_ca``)."""
    if settings.loopback or settings.client_ca is not None:
        return None
    if settings.cert is None:
        how, remedy = "is plain HTTP", "give it metrics_tls_cert and metrics_tls_key"
    else:
        how, remedy = "takes any scraper over HTTPS", "give it metrics_tls_client_ca"
    return (
        f"{how} on a non-loopback address: anyone who reaches it reads this site's activity; "
        f"{remedy} unless that network is yours alone"
    )


def serve_metrics(
    settings: EndpointSettings, collectors: Iterable[Any], lives: Sequence[CertLife]
) -> Endpoint:
    """Serve the daemon's own collectors, with when its kit's certificates (``lives``: its
    own, then the CA's) end, the process's memory and CPU and Python's garbage collector
    beside them; ConfigError when the address cannot be served."""
    from prometheus_client import (  # here: only a site that turned it on pays for it
        GC_COLLECTOR,
        PLATFORM_COLLECTOR,
        PROCESS_COLLECTOR,
        CollectorRegistry,
        make_wsgi_app,
    )

    from flcore.metricsserver import MetricsServer

    registry = CollectorRegistry()
    own = (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR, _Certificates(lives))
    for collector in (*own, *collectors):
        registry.register(collector)
    exposed = exposure(settings)
    if exposed:
        log.warning("metrics endpoint on %s %s", settings.url, exposed)
    try:
        server = MetricsServer(settings.host, settings.port, _tls_context(settings))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"cannot serve metrics on {settings.url}: {getattr(exc, 'strerror', None) or exc}; "
            "is the port in use, or the certificate not the key's?"
        ) from None
    server.set_app(make_wsgi_app(registry))
    thread = threading.Thread(target=server.serve_forever, name="metrics", daemon=True)
    thread.start()
    log.info("metrics endpoint serving on %s", settings.url)
    return Endpoint(server, thread)


def _tls_context(settings: EndpointSettings) -> ssl.SSLContext | None:
    """TLS 1.2 or later with the endpoint's certificate, and the scrapers' certificates
    required when a CA for them is set; None for plain HTTP."""
    if settings.cert is None or settings.key is None:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(settings.cert, settings.key)
    if settings.client_ca is not None:
        context.load_verify_locations(cafile=settings.client_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context
