"""Hypothesis settings shared by the property-based tests, and strategies for config values.

Derandomized and without an example database, so a run never depends on
what an earlier run left in ``.hypothesis/`` and CI sees the same examples
every time; ``deadline=None`` because the machine is shared and slow.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

FUZZ = settings(
    max_examples=150,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40)
"""Every kind of value a JSON or YAML config can hold."""

values: st.SearchStrategy[Any] = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)
"""Nested config values of any shape."""


def mutated(base: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    """``base`` with some keys replaced by arbitrary values, some removed, some added."""
    keys = sorted(base)
    return st.fixed_dictionaries(
        {},
        optional={key: values | st.just(base[key]) for key in keys},
    ).flatmap(
        lambda kept: st.dictionaries(st.text(max_size=12), values, max_size=2).map(
            lambda extra: {**extra, **kept}
        )
    )
