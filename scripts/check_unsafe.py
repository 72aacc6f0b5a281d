"""Fail the build on a decoder that can run code: pickle and its kin, unsafe YAML, torch.load
without ``weights_only=True``, eval/exec, marshal, shelve.

Every one of these turns bytes into code execution when the bytes come from
a peer, and the peers of a federated project are other organisations (the
FOBS and pickle CVEs of NVIDIA FLARE came through exactly these doors). The
check reads the syntax tree of every Python file of the repository, so a
comment or a string that mentions one of them is no finding, and ``model.eval()``
is not ``eval``. A line may be let through only with a comment that says why:
``# unsafe-ok: <reason of at least ten characters>``. ``make lint`` runs it;
exit code 1 lists each finding as ``path:line: what``.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SKIPPED = ("flcore/proto/gen/",)
"""Generated code: protoc's output is checked by its own test against the .proto files."""

FORBIDDEN_MODULES = {
    "pickle": "pickle runs code named in its data",
    "_pickle": "pickle runs code named in its data",
    "cPickle": "pickle runs code named in its data",
    "pickletools": "pickle tooling has no place in flstack",
    "dill": "dill is pickle and runs code named in its data",
    "cloudpickle": "cloudpickle is pickle and runs code named in its data",
    "jsonpickle": "jsonpickle builds any class its data names",
    "joblib": "joblib loads pickles",
    "marshal": "marshal loads code objects",
    "shelve": "shelve stores pickles",
}
SAFE_YAML_LOADERS = frozenset({"SafeLoader", "CSafeLoader", "BaseLoader", "CBaseLoader"})
UNSAFE_YAML_CALLS = frozenset({"unsafe_load", "unsafe_load_all", "full_load", "full_load_all"})
UNSAFE_YAML_LOADERS = frozenset(
    {"Loader", "UnsafeLoader", "FullLoader", "CLoader", "CUnsafeLoader", "CFullLoader"}
)
CODE_BUILTINS = frozenset({"eval", "exec"})
WAIVER = re.compile(r"#.*\bunsafe-ok:\s*(?P<reason>\S.{9,})")


@dataclass(frozen=True)
class Finding:
    """One forbidden use, where it is."""

    path: str
    line: int
    what: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.what}"


def _dotted(node: ast.expr) -> str:
    """``a.b.c`` for a name or attribute chain ('' for anything else)."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return ""


def _keyword(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _is_true(node: ast.expr | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


class _Visitor(ast.NodeVisitor):
    def __init__(self) -> None:
        self.found: list[tuple[int, str]] = []
        self.aliases: dict[str, str] = {}
        """``import torch as t`` makes ``t.load`` read as ``torch.load``."""

    def _name(self, node: ast.expr) -> str:
        head, dot, rest = _dotted(node).partition(".")
        return self.aliases.get(head, head) + dot + rest

    def _add(self, node: ast.AST, what: str) -> None:
        self.found.append((getattr(node, "lineno", 0), what))

    def _module(self, node: ast.AST, name: str) -> None:
        top = name.split(".")[0]
        if top in FORBIDDEN_MODULES:
            self._add(node, f"import of {name}: {FORBIDDEN_MODULES[top]}")

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._module(node, alias.name)
            if alias.asname:
                self.aliases[alias.asname] = alias.name

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.module and node.level == 0:
            self._module(node, node.module)
            if node.module == "yaml":
                for alias in node.names:
                    if alias.name in UNSAFE_YAML_CALLS | UNSAFE_YAML_LOADERS | {"load", "load_all"}:
                        self._add(node, f"from yaml import {alias.name}: use yaml.safe_load")
            if node.module == "torch":
                for alias in node.names:
                    if alias.name == "load":
                        self._add(
                            node, "from torch import load: call torch.load(..., weights_only=True)"
                        )
            if node.module == "builtins":
                for alias in node.names:
                    if alias.name in CODE_BUILTINS:
                        self._add(node, f"from builtins import {alias.name}: runs code from data")

    def visit_Attribute(self, node: ast.Attribute) -> None:
        name = self._name(node)
        if name.startswith("yaml.") and node.attr in UNSAFE_YAML_LOADERS:
            self._add(node, f"{name}: builds any Python object; use yaml.SafeLoader")
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        name = self._name(node.func)
        last = name.rsplit(".", 1)[-1]
        if name in CODE_BUILTINS or name in {f"builtins.{b}" for b in CODE_BUILTINS}:
            self._add(node, f"{name}(): runs code from data")
        elif name.startswith("yaml.") and last in UNSAFE_YAML_CALLS:
            self._add(node, f"{name}(): builds any Python object; use yaml.safe_load")
        elif name in ("yaml.load", "yaml.load_all"):
            loader = _keyword(node, "Loader") or (node.args[1] if len(node.args) > 1 else None)
            if loader is None or _dotted(loader).rsplit(".", 1)[-1] not in SAFE_YAML_LOADERS:
                self._add(node, f"{name}() without Loader=yaml.SafeLoader")
        elif name == "torch.load" and not _is_true(_keyword(node, "weights_only")):
            self._add(node, "torch.load() without weights_only=True unpickles any object")
        elif name == "numpy.load" and _is_true(_keyword(node, "allow_pickle")):
            self._add(node, f"{name}(allow_pickle=True) unpickles any object")
        self.generic_visit(node)


def check_source(source: str, path: str) -> list[Finding]:
    """The findings in one file's source (a waived line excluded)."""
    try:
        tree = ast.parse(source, filename=path)
    except SyntaxError as exc:
        return [Finding(path, exc.lineno or 0, f"cannot be parsed: {exc.msg}")]
    visitor = _Visitor()
    visitor.visit(tree)
    lines = source.splitlines()
    return [
        Finding(path, line, what)
        for line, what in sorted(set(visitor.found))
        if not (0 < line <= len(lines) and WAIVER.search(lines[line - 1]))
    ]


def python_files(root: Path) -> Iterator[Path]:
    """The repository's Python files that git tracks or would track (not ignored ones)."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z", "*.py"],
            cwd=root,
            capture_output=True,
            check=True,
        ).stdout.decode()
        names: Iterable[str] = sorted(set(filter(None, listed.split("\0"))))
    except (OSError, subprocess.CalledProcessError):  # not a git checkout: every file but venvs
        names = sorted(
            p.relative_to(root).as_posix()
            for p in root.rglob("*.py")
            if not any(
                part.startswith(".") or part == "build" for part in p.relative_to(root).parts
            )
        )
    for name in names:
        if not name.startswith(SKIPPED) and (root / name).is_file():
            yield root / name


def check_tree(root: Path) -> list[Finding]:
    """Every finding in the repository at ``root``."""
    findings: list[Finding] = []
    for path in python_files(root):
        rel = path.relative_to(root).as_posix()
        findings += check_source(path.read_text(encoding="utf-8", errors="replace"), rel)
    return findings


def main(argv: list[str] | None = None) -> int:
    """Check the repository (or the folder given); 1 when anything was found."""
    args = sys.argv[1:] if argv is None else argv
    root = Path(args[0]).resolve() if args else ROOT
    findings = check_tree(root)
    for finding in findings:
        print(finding)
    if findings:
        print(
            f"check_unsafe: {len(findings)} use(s) of a decoder that can run code; see "
            "docs/security.md (a line that must stay says why: '# unsafe-ok: <reason>')",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
