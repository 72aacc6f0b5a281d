"""Building the objects an app names by dotted path (model, dataset, optimizer, ...).

config_train.json names classes and functions as ``{"path": ..., "args": ...}``
so that apps can use torch's own classes, our built-ins, or custom code shipped
in the app's ``resources/`` folder alike. Every way this can go wrong (a typo
in the path, an import error inside custom code, a wrong keyword argument)
is turned into a ConfigError that names the config file and the component,
because the person who must fix it reads the message far from the code.

Custom code only ever runs in child processes (the training child, the model
initialiser), which call :func:`use_resources` first; the daemons never
import it.

The app API used to live in ``flcore`` and ``flclientd``. Apps uploaded,
deployed or resumed after an upgrade still name those modules, so their
config paths are read under the new names (with a warning that says
which), and custom code that imports an old module fails with the name to
use instead of a bare "No module named".
"""

from __future__ import annotations

import importlib
import inspect
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flapp._checks import MAX_PARAMETERS, at_most
from flcore.appconfig import TRAIN_CONFIG, ComponentSpec
from flcore.appreview import CODE_SUFFIXES, is_built_in
from flcore.schema import ConfigError

TORCH_NN = "torch.nn."

logger = logging.getLogger(__name__)

MOVED_MODULES: dict[str, str] = {
    "flcore.models": "flapp.models",
    "flcore.datasets": "flapp.datasets",
    "flclientd.worker.trainer": "flapp.trainer",
}
"""Modules of the app API that moved to :mod:`flapp`, old name to new."""


def holds_code(resources: Path) -> bool:
    """Whether an app's ``resources/`` has a file Python could import. One without keeps the
    folder off ``sys.path``: its data (a folder named like a package, ``triton/``) would be
    taken for packages by the libraries the run imports."""
    return resources.is_dir() and any(
        path.name.endswith(CODE_SUFFIXES) for path in resources.rglob("*") if path.is_file()
    )


def use_resources(resources: Path) -> None:
    """Put an app's ``resources/`` folder first on ``sys.path``, and write no bytecode.

    First, so that a module shipped with the app wins over an installed one
    of the same name: the app's author tested against their own copy. No
    bytecode, so that importing the app leaves no ``__pycache__`` in
    ``resources/``: the digest a site approved (flcore.appreview) covers
    every file there, and must still match at the next start.
    """
    sys.dont_write_bytecode = True
    folder = str(resources.resolve())
    if folder in sys.path:
        sys.path.remove(folder)
    sys.path.insert(0, folder)
    importlib.invalidate_caches()


def import_object(path: str, where: str) -> Any:
    """Import the object named by a dotted path such as ``torch.optim.SGD``.

    The longest importable module prefix is imported and the rest is looked
    up as attributes, so nested names (``pkg.mod.Outer.Inner``) work too.
    A module that exists but fails while importing is reported with its own
    error, not as "not found", because that is what the author must fix.
    """
    parts = path.split(".")
    if len(parts) < 2 or not all(parts):
        raise ConfigError(f"{where}: {path!r} is not a dotted path like 'package.module.Name'")
    path = _current_name(path, where)
    parts = path.split(".")
    problem = ""
    for cut in range(len(parts) - 1, 0, -1):
        module_name = ".".join(parts[:cut])
        try:
            obj: Any = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name or module_name.startswith(f"{exc.name}."):
                problem = str(exc)
                continue
            moved = MOVED_MODULES.get(exc.name or "")
            if moved:
                raise ConfigError(
                    f"{where}: cannot import {path!r}: it imports {exc.name!r}, "
                    f"which is now {moved!r} (import the app API from 'flapp')"
                ) from exc
            raise ConfigError(f"{where}: cannot import {path!r}: {exc}") from exc
        except Exception as exc:
            raise ConfigError(
                f"{where}: cannot import {path!r}: {type(exc).__name__}: {exc}"
            ) from exc
        for depth, attribute in enumerate(parts[cut:], start=cut):
            try:
                obj = getattr(obj, attribute)
            except AttributeError:
                owner = ".".join(parts[:depth])
                raise ConfigError(
                    f"{where}: cannot import {path!r}: {owner!r} has no attribute {attribute!r}"
                ) from None
        return obj
    raise ConfigError(f"{where}: cannot import {path!r}: {problem}")


def _current_name(path: str, where: str) -> str:
    """``path`` under the module's new name if it names a moved module, else as it is."""
    for old, new in MOVED_MODULES.items():
        if path.startswith(f"{old}."):
            current = new + path.removeprefix(old)
            logger.warning("%s: %r is now %r; rename it in the app", where, path, current)
            return current
    return path


def resolve(spec: ComponentSpec, where: str) -> Callable[..., Any]:
    """Import a component's class or function and check that it can be called."""
    obj = import_object(spec.path, where)
    if not callable(obj):
        raise ConfigError(
            f"{where}: {spec.path!r} names a value of type {type(obj).__name__}, "
            "not a class or function"
        )
    return obj  # type: ignore[no-any-return]


def build(spec: ComponentSpec, where: str, *args: Any, **extra: Any) -> Any:
    """Create a component: ``factory(*args, **extra, **spec.args)``.

    The call's arguments are checked against the factory's signature first,
    so a misspelt key in ``args`` reads as a config error rather than as a
    TypeError from deep inside a library. A built-in factory
    (:func:`flcore.appreview.is_built_in`) that refuses the values it is
    given (``torch.optim.SGD(lr="x")``, a negative layer size) raises
    TypeError, ValueError or RuntimeError; that is a mistake in the config,
    so it reaches the admin as a sentence naming the component. Custom code
    raising them is left as it is: there they may be a bug in the code,
    which its traceback shows.

    Args:
        spec: The component as written in the config.
        where: Prefix of error messages, e.g. ``"config_train.json: model"``.
        *args: Positional arguments the caller supplies (an optimizer's parameters).
        **extra: Keyword arguments the caller supplies (a dataset's ``data_root``).
    """
    factory = resolve(spec, where)
    clash = sorted(set(extra) & set(spec.args))
    if clash:
        raise ConfigError(f"{where}: 'args' may not set {', '.join(map(repr, clash))}")
    kwargs = {**extra, **spec.args}
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):
        signature = None
    if signature is not None:
        try:
            signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise ConfigError(
                f"{where}: {spec.path!r} does not accept these arguments: {exc}"
            ) from None
    if not is_built_in(spec.path):
        return factory(*args, **kwargs)
    try:
        if spec.path.startswith(TORCH_NN):
            _refuse_oversized(factory, args, kwargs, spec.path, where)
        return factory(*args, **kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ConfigError(
            f"{where}: {spec.path!r} could not be built from its args: {str(exc)[:500]}; "
            "correct them in the config"
        ) from exc


def _refuse_oversized(
    factory: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    path: str,
    where: str,
) -> None:
    """Build a ``torch.nn`` module on the meta device (no memory) and refuse it past
    MAX_PARAMETERS values: an app of built-in components runs at a site without its IT's
    approval, and ``torch.nn.Linear(2**20, 2**20)`` would take all of its memory (flapp's own
    models check their sizes themselves)."""
    import torch  # the child's: this module is read where torch is not

    with torch.device("meta"):
        probe = factory(*args, **kwargs)
    if isinstance(probe, torch.nn.Module):
        values = sum(t.numel() for t in (*probe.parameters(), *probe.buffers()))
        at_most(f"{where}: {path!r}", "values", values, MAX_PARAMETERS, "make it smaller")


def train_where(component: str) -> str:
    """The prefix of messages about a component of config_train.json."""
    return f"{TRAIN_CONFIG}: {component}"
