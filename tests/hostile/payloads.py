"""The hostile corpus: each payload a peer, an admin or a file could bring, made once.

Payloads are built here rather than kept as files: a 100 MB config is a
sparse file that costs no disk, a zip bomb is a few hundred kilobytes that
unpack to a gibibyte, and a pickle that would run code only writes a marker
file (nothing here ever unpickles it; one test proves in a separate
interpreter that it would). docs/security.md lists every case with the
tests that feed it to each decoder and loader.
"""

from __future__ import annotations

import json
import struct
import zipfile
from pathlib import Path

from flcore.proto.gen import flstack_common_pb2 as common_pb2

TWO_POW_40 = 1 << 40
HUNDRED_MB = 100 * 1024 * 1024
DEEP = 100_000
"""Nesting of the deeply nested JSON: far past Python's recursion limit."""


def pickle_that_runs_code(marker: Path) -> bytes:
    """A protocol-0 pickle whose loading calls ``builtins.open(marker, "w")``: any unpickler
    that resolves globals creates ``marker``; a safe decoder creates nothing."""
    return b"cbuiltins\nopen\n(V" + str(marker).encode() + b"\nVw\ntR."


CLASS_NAMING = {
    "__class__": "os.system",
    "py/object": "subprocess.Popen",
    "__reduce__": ["os.system", ["touch /tmp/flstack-pwned"]],
    "__fobs_type__": "flstack.Everything",
    "_target_": "builtins.exec",
}
"""A message naming classes the way FOBS, jsonpickle, Hydra and pickle-by-JSON schemes do:
a decoder that builds objects by name would run code; ours read it as plain data or refuse."""


def class_naming_json() -> str:
    """:data:`CLASS_NAMING` as JSON text."""
    return json.dumps(CLASS_NAMING)


HOSTILE_PATHS = {
    "parent": "config/../../escaped.json",
    "dotdot_first": "../escaped.py",
    "absolute": "/etc/cron.d/flstack",
    "absolute_double": "//etc/passwd",
    "nul": "resources/a\0b.py",
    "newline": "resources/a\nb.py",
    "escape": "resources/\x1b]0;pwned\x07.py",
    "delete": "resources/x\x7f.py",
    "backslash": "resources\\..\\escaped.py",
    "name_300": "resources/" + "n" * 300 + ".py",
    "deep_5000": "/".join(["resources", *["d"] * 5000, "x.py"]),
    "bytecode": "resources/pkg/__pycache__/mod.cpython-311.pyc",
}
"""Paths an upload, a deploy or a kit could name; each is refused with its reason."""


def deep_json(depth: int = DEEP) -> str:
    """A JSON document nested ``depth`` lists deep (a few hundred kilobytes)."""
    return "[" * depth + "]" * depth


def huge_manifest() -> common_pb2.ModelManifest:
    """A model manifest declaring one tensor of 2^40 bytes, consistent with itself."""
    return common_pb2.ModelManifest(
        tensors=[common_pb2.TensorSpec(name="w", dtype="F32", shape=[TWO_POW_40 // 4])],
        total_bytes=TWO_POW_40,
    )


def safetensors_bytes(header: dict[str, object] | str, data: bytes = b"") -> bytes:
    """A safetensors file: 8-byte little-endian header length, header, data."""
    raw = header if isinstance(header, str) else json.dumps(header)
    encoded = raw.encode()
    return struct.pack("<Q", len(encoded)) + encoded + data


LYING_SAFETENSORS = {
    "offsets_past_the_end": safetensors_bytes(
        {"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 8
    ),
    "overlapping_offsets": safetensors_bytes(
        {
            "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
            "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},
        },
        b"\0" * 12,
    ),
    "size_2_pow_40": safetensors_bytes(
        {"w": {"dtype": "U8", "shape": [TWO_POW_40], "data_offsets": [0, TWO_POW_40]}}, b"\0" * 8
    ),
    "header_length_2_pow_63": struct.pack("<Q", 1 << 63) + b"{}",
    "deep_header": safetensors_bytes(deep_json(10_000)),
    "shape_not_matching_offsets": safetensors_bytes(
        {"w": {"dtype": "F32", "shape": [1000000], "data_offsets": [0, 8]}}, b"\0" * 8
    ),
}
"""safetensors files whose headers lie about offsets, sizes or their own length."""


def sparse_file(path: Path, size: int = HUNDRED_MB) -> Path:
    """A file of ``size`` bytes that occupies no disk (a hole), e.g. a 100 MB config."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as handle:
        handle.truncate(size)
    return path


def zip_bomb(path: Path, member: str = "startup/fed_client.json", gib: int = 1) -> Path:
    """A zip whose one member inflates to ``gib`` GiB of zeros (about a megabyte on disk)."""
    chunk = bytes(1024 * 1024)
    with (
        zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as archive,
        archive.open(member, "w", force_zip64=True) as out,
    ):
        for _ in range(gib * 1024):
            out.write(chunk)
    return path


def lying_zip_bomb(path: Path, member: str = "startup/fed_client.json") -> Path:
    """A zip bomb whose headers claim its member is 10 bytes: a reader that trusted the
    sizes would inflate 256 MiB."""
    chunk = bytes(1024 * 1024)
    with (
        zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive,
        archive.open(member, "w") as out,
    ):
        for _ in range(256):
            out.write(chunk)
    data = bytearray(path.read_bytes())
    claimed = struct.pack("<I", 10)
    data[22:26] = claimed  # the local header's uncompressed size
    central = data.rfind(b"PK\x01\x02")
    data[central + 24 : central + 28] = claimed  # and the central directory's
    path.write_bytes(bytes(data))
    return path
