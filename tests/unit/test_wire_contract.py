"""The wire: what a peer of another flstack version sees of ours, pinned.

Sites and the server are upgraded one at a time, so each version talks to
the one before. On the wire a method is its path, a field its number and
type, an enum value its number: renaming a method (a 2026-12-06 rename of
Session made every older client's control stream "Method not found!") or
renumbering an enum (UPLOAD_KIND_BEST_LOCAL = 2 read as no kind at all by
an older server) breaks the other version without a word. Names of messages
and fields are free to change (the contract is their shape: field numbers,
types, enum values); numbers and method paths are not. A change
that adds to the wire updates ``wire_contract.json`` with
``python tests/unit/test_wire_contract.py`` and says so in its commit.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from google.protobuf.descriptor import Descriptor

from flcore.proto.gen import flstack_admin_pb2, flstack_common_pb2, flstack_federation_pb2

GOLDEN = Path(__file__).with_name("wire_contract.json")
FILES = (flstack_common_pb2, flstack_federation_pb2, flstack_admin_pb2)


def _shape(message: Descriptor, within: tuple[str, ...] = ()) -> dict[str, Any]:
    """A message as the wire sees it, whatever its and its fields' names: each field number's
    type (repeated or not), a message field's own shape, an enum field's values."""
    shape: dict[str, Any] = {}
    for field in sorted(message.fields, key=lambda f: f.number):
        kind: dict[str, Any] = {"type": field.type, "repeated": field.is_repeated}
        held = field.message_type
        if held is not None and held.full_name not in within:  # a message that holds itself
            kind["of"] = _shape(held, (*within, message.full_name))
        if field.enum_type is not None:
            kind["values"] = {value.name: value.number for value in field.enum_type.values}
        shape[str(field.number)] = kind
    return shape


def current() -> dict[str, Any]:
    """Every method's path, streaming, and the shapes of what it takes and gives."""
    return {
        f"/{service.full_name}/{method.name}": {
            "streams": [method.client_streaming, method.server_streaming],
            "takes": _shape(method.input_type),
            "gives": _shape(method.output_type),
        }
        for module in FILES
        for service in module.DESCRIPTOR.services_by_name.values()
        for method in service.methods
    }


def _kept(old: Any, new: Any, where: str) -> list[str]:
    """Where ``new`` drops or changes what ``old`` had (additions are free)."""
    if isinstance(old, dict) and isinstance(new, dict):
        broken = []
        for key, value in old.items():
            if key not in new:
                broken.append(f"{where}/{key}: gone")
            else:
                broken += _kept(value, new[key], f"{where}/{key}")
        return broken
    return [] if old == new else [f"{where}: {old!r} is now {new!r}"]


def test_the_wire_keeps_every_method_path_field_number_and_enum_value() -> None:
    golden = json.loads(GOLDEN.read_text())
    assert _kept(golden, current(), "") == []


def test_the_control_stream_and_the_upload_kinds_keep_their_wire_names_and_numbers() -> None:
    """The two the 2026-12-06 renames broke, spelled out."""
    wire = current()
    assert wire["/flstack.v1.Federation/Session"]["streams"] == [True, True]
    upload = wire["/flstack.v1.Federation/SubmitModel"]["takes"]
    kinds = upload["1"]["of"]["4"]["values"]  # the header's kind
    assert kinds["UPLOAD_KIND_UPDATE"] == 1 and kinds["UPLOAD_KIND_BEST_LOCAL"] == 3


if __name__ == "__main__":
    GOLDEN.write_text(json.dumps(current(), indent=1, sort_keys=True) + "\n")
    print(f"wrote {GOLDEN}", file=sys.stderr)
