"""The cross-site validation matrix, as the server keeps and sends it and the console reads it.

The server sends it as JSON (``validate``'s reply data, and
``run_N/cross_site_validation.json``) with :meth:`ValidationMatrix.as_json`;
a reader decodes it once with :meth:`ValidationMatrix.from_json`. Decoding
never fails: what is missing or of another type (a server of another
version) reads as empty, and a matrix without its rows or columns as one
without results.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


def _strings(value: object) -> list[str]:
    return [str(item) for item in value] if isinstance(value, list) else []


def _cell(value: object) -> MatrixCell | None:
    if not isinstance(value, Mapping):
        return None
    metrics = value.get("metrics")
    error = value.get("error")
    return MatrixCell(
        {
            str(name): float(number)
            for name, number in (metrics.items() if isinstance(metrics, Mapping) else ())
            if isinstance(number, int | float) and not isinstance(number, bool)
        },
        str(error) if error else "",
    )


@dataclass(frozen=True)
class MatrixCell:
    """One site's validation of one model: its metrics, or why there are none."""

    metrics: dict[str, float]
    error: str


@dataclass(frozen=True)
class ValidationMatrix:
    """The cross-site results: rows are model owners (``global`` first), columns the
    validating sites; ``notes`` say why a site has no model or no results."""

    run_number: int
    rows: list[str]
    columns: list[str]
    cells: dict[str, dict[str, MatrixCell]] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)

    def cell(self, row: str, column: str) -> MatrixCell | None:
        """The result of ``column`` validating the model of ``row``, if there is one."""
        return self.cells.get(row, {}).get(column)

    def metric_names(self) -> list[str]:
        """Every metric some cell reports, sorted."""
        return sorted(
            {name for row in self.cells.values() for cell in row.values() for name in cell.metrics}
        )

    def as_json(self) -> dict[str, Any]:
        """The matrix for programs (``validate --json``, cross_site_validation.json)."""
        return {
            "run_number": self.run_number,
            "rows": list(self.rows),
            "columns": list(self.columns),
            "cells": {
                row: {
                    column: {"metrics": cell.metrics, "error": cell.error}
                    for column, cell in cells.items()
                }
                for row, cells in self.cells.items()
            },
            "notes": dict(self.notes),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ValidationMatrix:
        """The matrix in a reply's data (``run_number`` -1 when the data does not say)."""
        number = data.get("run_number")
        rows, columns = data.get("rows"), data.get("columns")
        cells = data.get("cells")
        notes = data.get("notes")
        decoded: dict[str, dict[str, MatrixCell]] = {}
        if isinstance(cells, Mapping) and isinstance(rows, list) and isinstance(columns, list):
            for row, by_site in cells.items():
                if isinstance(by_site, Mapping):
                    decoded[str(row)] = {
                        str(column): cell
                        for column, value in by_site.items()
                        if (cell := _cell(value)) is not None
                    }
        return cls(
            number if isinstance(number, int) and not isinstance(number, bool) else -1,
            _strings(rows),
            _strings(columns),
            decoded,
            {str(k): str(v) for k, v in notes.items()} if isinstance(notes, Mapping) else {},
        )
