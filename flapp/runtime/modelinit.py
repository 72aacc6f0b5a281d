"""The model-init child: the initial global model of a run.

The server needs a first global model before round 0, but it must never
import torch or an app's custom code itself. So it runs this module as a
short child process::

    python -m flapp.runtime.modelinit --app APP_DIR --out FILE [--seed N]
        [--checkpoint-dir DIR ...]

which builds the app's model (its ``model`` component, or the network
definition of its MONAI bundle), optionally loads the pre-trained checkpoint
named by ``initial_checkpoint`` in config_fed_server.json (to continue
training: a file in the app, or under a ``--checkpoint-dir``, the folders
the server allows; see flcore.serverpaths), and writes the state dict as
safetensors. On failure it exits
with code 2 and one line ``error: <message>`` on stderr (followed by the
traceback when the failure was not a plain configuration mistake), which
the server shows to the admin as is.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from flapp.runtime.components import holds_code, use_resources
from flapp.runtime.leave import leave
from flapp.runtime.modelfile import build_model, check_fits, save_state, state_manifest
from flcore.appconfig import SERVER_CONFIG, App, TrainConfig, load_app
from flcore.schema import ConfigError
from flcore.serverpaths import checkpoint_file
from flcore.tensorfile import Manifest, TensorFileError


def _reason(exc: Exception) -> str:
    """Why a checkpoint could not be read, in one line an admin can act on.

    torch's refusal of a pickle that names anything but tensors spans many
    lines, carries terminal escapes and offers to load the file unsafely;
    the admin gets what it means instead.
    """
    if type(exc).__name__ == "UnpicklingError":
        return (
            "it holds Python objects other than tensors, which flstack never loads "
            "(torch.load with weights_only=True); save only the model's state_dict, "
            "best as .safetensors"
        )
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return "".join(char for char in first if char.isprintable())[:300]


def read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """Read a pre-trained checkpoint: safetensors, or a torch file holding only tensors.

    torch files are read with ``weights_only=True`` so that a checkpoint can
    never run code. A mapping with a ``state_dict`` or ``model`` entry (as
    many training scripts save) is unwrapped.
    """
    if not path.is_file():
        raise ConfigError(f"{SERVER_CONFIG}: initial_checkpoint {path} does not exist")
    try:
        loaded: object = (
            load_file(str(path))
            if path.suffix == ".safetensors"
            else torch.load(path, map_location="cpu", weights_only=True)
        )
    except Exception as exc:
        raise ConfigError(
            f"{SERVER_CONFIG}: initial_checkpoint {path}: cannot read it ({_reason(exc)})"
        ) from None
    if isinstance(loaded, Mapping):
        for key in ("state_dict", "model"):
            if isinstance(loaded.get(key), Mapping):
                loaded = loaded[key]
                break
    if not isinstance(loaded, Mapping):
        raise ConfigError(
            f"{SERVER_CONFIG}: initial_checkpoint {path} holds a {type(loaded).__name__}, "
            "not a state dict"
        )
    state: dict[str, torch.Tensor] = {}
    for name, value in loaded.items():
        if not isinstance(value, torch.Tensor):
            raise ConfigError(
                f"{SERVER_CONFIG}: initial_checkpoint {path}: entry {name!r} is a "
                f"{type(value).__name__}, not a tensor"
            )
        state[str(name)] = value
    return state


def _model(app: App) -> nn.Module:
    """The app's model: its ``model`` component, or its MONAI bundle's network definition."""
    if isinstance(app.train, TrainConfig):
        return build_model(app.train.model)
    # MONAI is an optional extra: imported only for an app that trains a bundle.
    from flapp.runtime.monaibundle import bundle_network

    return bundle_network(app.resources / app.train.folder, app.train)


def init_model(
    app_dir: Path, out: Path, seed: int | None = None, checkpoint_dirs: Sequence[Path] = ()
) -> Manifest:
    """Build the app's initial global model and write it to ``out``.

    Args:
        app_dir: The app folder (config/ and resources/).
        out: The safetensors file to write.
        seed: Seed of torch's generator; config_train.json's ``seed`` when None,
            so that the same app always starts from the same weights.
        checkpoint_dirs: Where an absolute ``initial_checkpoint`` may lie (none:
            only a file in the app is read).

    Returns:
        The tensors written.
    """
    app = load_app(app_dir)
    checkpoint = app.server.initial_checkpoint if app.server else None
    path = checkpoint_file(app_dir, checkpoint, checkpoint_dirs) if checkpoint else None
    if holds_code(app.resources):
        use_resources(app.resources)
    torch.manual_seed(app.train.seed if seed is None else seed)
    model = _model(app)
    expected = state_manifest(model.state_dict())
    if path is not None:
        state = read_checkpoint(path)
        try:
            check_fits(expected, state_manifest(state), f"initial_checkpoint {path}")
        except TensorFileError as exc:
            raise ConfigError(f"{SERVER_CONFIG}: {exc}") from None
        model.load_state_dict(state, strict=True)
    save_state(model.state_dict(), out)
    return expected


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry; returns the exit code (2 on any failure)."""
    parser = argparse.ArgumentParser(
        prog="python -m flapp.runtime.modelinit", description="Write an app's initial global model."
    )
    parser.add_argument("--app", type=Path, required=True, help="the app folder")
    parser.add_argument("--out", type=Path, required=True, help="the safetensors file to write")
    parser.add_argument("--seed", type=int, default=None, help="torch seed (default: the app's)")
    parser.add_argument(
        "--checkpoint-dir",
        type=Path,
        action="append",
        default=[],
        help="a folder an absolute initial_checkpoint may lie in (repeatable)",
    )
    args = parser.parse_args(argv)
    try:
        manifest = init_model(args.app, args.out, args.seed, args.checkpoint_dir)
    except (ConfigError, TensorFileError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        traceback.print_exc()
        return 2
    print(f"{args.out}: {len(manifest.tensors)} tensors, {manifest.num_elements} values")
    return 0


if __name__ == "__main__":
    leave(main())
