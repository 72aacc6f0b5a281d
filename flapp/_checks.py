"""Checks of the sizes a built-in component is given, made before it allocates anything.

An app made only of built-in components runs at a site without its IT's
approval (:mod:`flcore.appreview`), so these sizes come from whoever wrote
the app, not from the site: a built-in refuses any that is not a positive
integer, and any that is over its fixed cap, with a ConfigError the admin
reads, so that such an app can never take the site's memory.
"""

from __future__ import annotations

from flcore.schema import ConfigError

MAX_PARAMETERS = 2**29
"""Most values a built-in model may hold (2 GiB of float32 weights, about three times that
to train): this still fits the 2.1 GB model of ``bench/big_model.py``. Larger models are
custom code, which each site approves."""


def positive_int(owner: str, name: str, value: object) -> int:
    """``value`` if it is a positive integer (``true`` in JSON is not one)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{owner}: {name} must be a positive integer, got {value!r:.50}")
    return value


def at_most(owner: str, what: str, count: int, cap: int, remedy: str) -> None:
    """Refuse ``count`` of ``what`` over ``cap``, saying the cap and what to make smaller."""
    if count > cap:
        raise ConfigError(f"{owner}: {count:,} {what} is more than the {cap:,} allowed; {remedy}")
