"""The scans that stand before parsing and drawing JSON a peer sent: its depth
(``flcore.configfile.json_depth``) and whether any string in it needs cleaning
(``flcore.feed.json_printable``), which the admin uses to skip walking a clean
reply of 1,000 clients' rows. Both are checked against the parsed value."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fladmin.client import _from_wire, upload_deadline
from flcore.configfile import json_depth
from flcore.feed import json_printable, printable
from flcore.proto.gen import flstack_admin_pb2 as admin_pb2

# Strings rich in what the scans must see through: quotes, backslashes, brackets, controls.
TEXT = st.text(
    alphabet=st.sampled_from('a"\\[]{}u01\t\n\r\x08\x1b\x7f\x85\x9fé\u202e\u2066\u200f\u061c'),
    max_size=8,
)
VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=20,
)


def depth(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max((depth(item) for item in value), default=0)
    if isinstance(value, dict):
        return 1 + max((depth(item) for item in value.values()), default=0)
    return 0


def strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [s for item in value for s in strings(item)]
    if isinstance(value, dict):
        return [s for key, item in value.items() for s in [key, *strings(item)]]
    return []


@given(VALUES, st.booleans())
def test_json_depth_is_the_nesting_of_the_parsed_value(value: Any, ascii_only: bool) -> None:
    assert json_depth(json.dumps(value, ensure_ascii=ascii_only)) == depth(value)


def test_json_depth_ignores_brackets_in_strings_with_escapes() -> None:
    assert json_depth('{"a": "\\\\", "b": "\\"[[[", "c": [["\\\\\\"]"]]}') == 3
    assert json_depth("[" * 40 + "]" * 40) == 40


@given(VALUES, st.booleans())
def test_json_printable_never_passes_a_control(value: Any, ascii_only: bool) -> None:
    dirty = any(printable(s) != s for s in strings(value))
    text = json.dumps(value, ensure_ascii=ascii_only)
    if dirty:
        assert not json_printable(text)
    if json_printable(text):
        assert all(printable(s) == s for s in strings(json.loads(text)))


def test_json_printable_sees_raw_and_escaped_controls() -> None:
    assert json_printable('{"name": "site-1", "note": "tab\\tand\\nnewline", "x": "é"}')
    for dirty in ('{"a": "\\u001b[2J"}', '{"a": "\\r"}', '{"\\b": 1}', '["\x85"]', '["\x7f"]'):
        assert not json_printable(dirty), dirty
    # Bidirectional overrides and isolates reorder the rest of a terminal's line.
    for dirty in ('["\\u202E"]', '["\u202e"]', '["\\u2066x"]', '["\\u200f"]'):
        assert not json_printable(dirty), dirty
    assert printable("host\u202eexe.txt") == "host\ufffdexe.txt"


def reply(data: dict[str, Any]) -> admin_pb2.CommandReply:
    return admin_pb2.CommandReply(ok=True, text="t", data_json=json.dumps(data))


def test_a_reply_with_a_control_in_a_key_or_a_value_reaches_the_admin_cleaned() -> None:
    sent = {"clients": {"a\x1b": {"error": "x\x9by"}}}
    data = _from_wire("check_status client", reply(sent)).data
    assert data == {"clients": {"a\ufffd": {"error": "x\ufffdy"}}}


def test_a_clean_reply_reaches_the_admin_as_it_is() -> None:
    rows = {f"site-{i}": {"status": "training not started", "round": -1} for i in range(1000)}
    assert _from_wire("check_status client", reply({"clients": rows})).data == {"clients": rows}


def test_json_for_scripts_is_standard_json_whatever_a_site_reported() -> None:
    """A site's NaN metric reached `fltui --cmd --json` as `NaN`, which jq refuses."""
    sent = '{"clients": {"a": {"metrics": {"loss": NaN, "acc": 0.5, "x": [Infinity, 1]}}}}'
    wire = admin_pb2.CommandReply(ok=True, text="t", data_json=sent)
    printed = _from_wire("check_status client", wire).as_json()

    def refuse(constant: str) -> None:
        raise ValueError(f"{constant} is not JSON")

    record = json.loads(printed, parse_constant=refuse)
    assert record["data"] == {
        "clients": {"a": {"metrics": {"loss": None, "acc": 0.5, "x": [None, 1]}}}
    }
    assert record["command"] == "check_status client" and record["ok"] is True


def test_an_upload_is_given_time_for_its_size_on_a_slow_link() -> None:
    """A fixed minute cut a 200 MB app off any link under 27 Mbit/s."""
    assert upload_deadline(10_000, 10.0) == pytest.approx(60.08)
    assert upload_deadline(200_000_000, 10.0) >= 200_000_000 * 8 / 1_000_000  # at 1 Mbit/s
    assert upload_deadline(0, 120.0) == 120.0
