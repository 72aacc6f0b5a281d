"""Login tokens: made, named and compared in one place.

A token is a bearer secret bound to the certificate that obtained it; only
the server and the peer holding it ever see it whole. People, logs and
scripts see its *token id* instead: the first hex digits of the token's
SHA-256, which tells sessions apart and gives away nothing of the token (a
prefix of the token itself would shorten what an attacker has to guess).
Both daemons log the same id, so a site's log and the server's can be
matched line by line. The server keeps a client's token only as its SHA-256
(:func:`token_key`), in memory and in its state database: what it stores
cannot be presented back to it.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

TOKEN_ID_HEX = 8


def new_token() -> str:
    """A fresh random token (128 bits, URL-safe text)."""
    return secrets.token_urlsafe(16)


def token_key(token: str) -> bytes:
    """What a table of tokens is keyed by: the token's SHA-256, so that looking one up
    takes no longer for a near miss than for a far one."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


def token_id(token: str) -> str:
    """The token's public name: the first hex digits of its SHA-256 ("" for no token)."""
    return key_id(token_key(token)) if token else ""


def key_id(key: bytes) -> str:
    """The public name of the token whose SHA-256 is ``key``."""
    return key.hex()[:TOKEN_ID_HEX]


def same_key(held: bytes, token: str) -> bool:
    """Whether a presented token is the one whose SHA-256 is held, in constant time."""
    return hmac.compare_digest(held, token_key(token))


def same_token(held: str, presented: str) -> bool:
    """Whether a presented token is the one held, in time that does not depend on where
    they differ."""
    return hmac.compare_digest(
        held.encode("utf-8", "surrogatepass"), presented.encode("utf-8", "surrogatepass")
    )
