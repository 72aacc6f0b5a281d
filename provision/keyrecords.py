"""What a workspace's records say of a key a site made, asked by ``sign`` of every request
and by ``--force`` of every such key it certifies again.

``sign`` compares a request's key with every certificate issued here, and
``--force`` certifies the key on record again without a new request. Records
written by an older flprovision, whose ``sign`` compared less (it certified a
revoked key again once the site left project.yml and came back), may hold a
key ``sign`` refuses today; ``--force`` asks the same question, so such a key
is not renewed for years more unnoticed.
"""

from __future__ import annotations

from cryptography.hazmat.primitives.serialization import load_pem_public_key

from flcore.kitsig import PublicKey, public_key_sha256
from provision.kits import Participant
from provision.revocation import REISSUE_REASON
from provision.workspace import Entry, Workspace

UNKNOWN_SHOWN = 3
"""Names a warning gives of the certificates whose keys are not on record."""


def held_public_key(entry: Entry) -> PublicKey | None:
    """The public key a participant that made its own key sent, as its record entry keeps it."""
    pem = entry.get("public_key")
    if not isinstance(pem, str):
        return None
    key = load_pem_public_key(pem.encode())
    assert isinstance(key, PublicKey)  # only keys of our types were ever certified
    return key


def _key_on_record(entry: Entry) -> str | None:
    """The SHA-256 of a certificate's key from its record entry; None where an older version
    kept neither it nor the key (a zip kit's)."""
    digest = entry.get("public_key_sha256")
    if isinstance(digest, str):
        return digest
    held = held_public_key(entry)
    return None if held is None else public_key_sha256(held)


class KeyRecords:
    """Every certificate issued in a workspace, by its key (read once, lock held)."""

    def __init__(self, ws: Workspace) -> None:
        """Read audit.json, issued.json and revoked.json of ``ws``."""
        self._revoked = {entry.serial: entry.reason for entry in ws.load_revoked().revoked}
        self._by_key: dict[str, list[Entry]] = {}
        unknown: list[str] = []
        for entry in ws.certificates():
            digest = _key_on_record(entry)
            if digest is None:
                unknown.append(str(entry.get("name")))
            else:
                self._by_key.setdefault(digest, []).append(entry)
        self._unknown = tuple(unknown)
        """Owners of the certificates whose keys the records do not keep, one per certificate."""

    def refusal(self, who: Participant, key: PublicKey, again: bool = False) -> str | None:
        """Why ``key`` is never certified for ``who``, as a clause about "its key"; None when
        no record stands against it.

        A key made here for a zip kit travelled in that kit, so it is not one only
        a site knows, which is what a request stands for. A key certified for
        another participant would make two of them one. A revoked key may be a
        stolen one: certified again, it would be trusted anew. ``who``'s own
        request key passes; ``again`` (``--force`` renewing it) also passes its
        own certificates for the key revoked as superseded, which is what
        ``--force`` does to each certificate it renews.
        """
        matches = [
            entry
            for entry in self._by_key.get(public_key_sha256(key), [])
            if not (again and self._renewed(entry, who))
        ]
        for entry in sorted(matches, key=lambda each: each["serial"] not in self._revoked):
            owner, serial = entry.get("name"), entry["serial"]
            if serial in self._revoked:
                return (
                    f"its key was certified before for {owner!r} (serial {serial}) and that "
                    "certificate is revoked, so it is never certified again"
                )
            if "public_key" not in entry:
                return (
                    f"its key is the one made here for the zip kit of {owner!r} (serial "
                    f"{serial}), so it is no key only the site knows"
                )
            if (owner, entry.get("kind")) != (who.name, who.kind):
                return (
                    f"its key was certified before for {owner!r} (serial {serial}), and a key "
                    "is one participant's only"
                )
        return None

    def _renewed(self, entry: Entry, who: Participant) -> bool:
        """``who``'s own request-key certificate, valid or superseded by a renewal."""
        mine = (entry.get("name"), entry.get("kind")) == (who.name, who.kind)
        reason = self._revoked.get(entry["serial"])
        return mine and "public_key" in entry and reason in (None, REISSUE_REASON)

    def uncompared(self, whose: str) -> str | None:
        """The warning that ``whose`` could not be compared with every certificate; None when
        every certificate's key is on record."""
        if not self._unknown:
            return None
        names = list(dict.fromkeys(self._unknown))
        shown = ", ".join(names[:UNKNOWN_SHOWN])
        if len(names) > UNKNOWN_SHOWN:
            shown += f" and {len(names) - UNKNOWN_SHOWN} more"
        return (
            f"{whose} could not be compared with {len(self._unknown)} certificate(s) that an "
            f"earlier flprovision issued ({shown}): it kept no record of their keys, and their "
            "kits are encrypted; certificates issued from now on are on record"
        )
