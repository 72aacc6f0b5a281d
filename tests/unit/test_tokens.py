"""flcore.tokens: a token's public id tells sessions apart and gives nothing of it away."""

from __future__ import annotations

import hashlib

from hypothesis import given
from hypothesis import strategies as st

from flcore.tokens import TOKEN_ID_HEX, new_token, same_token, token_id


def test_a_token_id_is_a_hash_prefix_never_a_piece_of_the_token() -> None:
    token = new_token()
    assert token_id(token) == hashlib.sha256(token.encode()).hexdigest()[:TOKEN_ID_HEX]
    assert token_id(token) not in token and token[:TOKEN_ID_HEX] != token_id(token)
    assert token_id("") == ""
    assert len({new_token() for _ in range(1000)}) == 1000


@given(st.text(max_size=40), st.text(max_size=40))
def test_same_token_is_equality(held: str, presented: str) -> None:
    assert same_token(held, presented) == (held == presented)
