"""Who a peer is, read from its certificate.

Identity never comes from a field the peer fills in: the server reads the
verified client certificate that gRPC puts in the auth context. Provisioning
writes the subject as CN=<name>, O=<org>, OU=<kind>, and for admins
TITLE=<role>; this module is the one place that reads it back.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache

from cryptography import x509
from cryptography.x509.oid import NameOID

KIND_SERVER = "server"
KIND_CLIENT = "client"
KIND_ADMIN = "admin"
KINDS = (KIND_SERVER, KIND_CLIENT, KIND_ADMIN)
BACKDATED = timedelta(minutes=5)
"""How long before its signing provisioning starts a certificate's validity, so that a peer
whose clock is a little behind accepts it: a certificate was issued this long after its start."""

ROLE_SUPER = "super"
ROLE_MEMBER = "member"
ROLES = (ROLE_SUPER, ROLE_MEMBER)


@dataclass(frozen=True)
class Identity:
    """A participant as its certificate names it."""

    name: str
    org: str
    kind: str
    role: str = ""
    serial: int = 0
    """The certificate's serial number: what a revocation list names."""
    valid_until: datetime | None = None
    """When the certificate ends (the server warns as it nears)."""
    issued: datetime | None = None
    """When provisioning signed the certificate: a revocation at the server's console refuses
    the certificates of a name issued before it, not a kit issued to replace them."""


def _attr(name: x509.Name, oid: x509.ObjectIdentifier) -> str:
    values = name.get_attributes_for_oid(oid)
    if not values:
        return ""
    value = values[0].value
    return value.decode() if isinstance(value, bytes) else value


def identity_from_certificate(cert: x509.Certificate) -> Identity:
    """Read the identity of a certificate issued by flprovision."""
    subject = cert.subject
    return Identity(
        name=_attr(subject, NameOID.COMMON_NAME),
        org=_attr(subject, NameOID.ORGANIZATION_NAME),
        kind=_attr(subject, NameOID.ORGANIZATIONAL_UNIT_NAME),
        role=_attr(subject, NameOID.TITLE),
        serial=cert.serial_number,
        valid_until=cert.not_valid_after_utc,
        issued=cert.not_valid_before_utc + BACKDATED,
    )


def instance_name(name: str, number: int) -> str:
    """What the server calls instance ``number`` of kit ``name`` (0 is the kit's own name)."""
    return name if number == 0 else f"{name}_{number}"


def is_instance_of(instance: str, name: str) -> bool:
    """Whether ``instance`` is a name :func:`instance_name` gives kit ``name``.

    A site builds folder names from the instance name the server gives it at login, so it
    takes no other (``x/../../local`` would have made a deploy replace the site's policy).
    """
    return re.fullmatch(re.escape(name) + r"(_[1-9][0-9]{0,5})?", instance) is not None


@lru_cache(maxsize=1024)
def identity_from_pem(pem: bytes) -> Identity:
    """Read the identity of a PEM-encoded certificate (each peer's once: the server reads
    it on every call)."""
    return identity_from_certificate(x509.load_pem_x509_certificate(pem))


def identity_from_auth_context(auth: Mapping[str, Iterable[bytes]]) -> Identity | None:
    """Read the verified peer certificate of a gRPC call, or None when there is none."""
    pem = next(iter(auth.get("x509_pem_cert", ())), None)
    return None if pem is None else identity_from_pem(pem)
