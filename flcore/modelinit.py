"""Model state files: the initial global model, and state dicts in and out of safetensors.

The server needs a first global model before round 0, but it must never
import torch or an app's custom code itself. So it runs this module as a
short child process::

    python -m flcore.modelinit --app APP_DIR --out FILE [--seed N]

which builds the app's model, optionally loads the pre-trained checkpoint
named by ``initial_checkpoint`` in config_fed_server.json (to continue
training), and writes the state dict as safetensors. On failure it exits
with code 2 and one line ``error: <message>`` on stderr (followed by the
traceback when the failure was not a plain configuration mistake), which
the server shows to the admin as is.

The same file helpers are used by the training child, so every model file of
a run has the same tensor names, dtypes and shapes as the model that made it.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from flcore.appconfig import SERVER_CONFIG, ComponentSpec, load_app
from flcore.atomic import atomic_produce
from flcore.components import build, train_where, use_resources
from flcore.schema import ConfigError
from flcore.tensorfile import Manifest, TensorFile, TensorFileError, TensorSpec

SAFETENSORS_DTYPES: dict[torch.dtype, str] = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}


def build_model(spec: ComponentSpec) -> nn.Module:
    """Create the model named in config_train.json and check that it is a torch module."""
    where = train_where("model")
    model = build(spec, where)
    if not isinstance(model, nn.Module):
        raise ConfigError(
            f"{where}: {spec.path!r} returned a {type(model).__name__}, not a torch.nn.Module"
        )
    return model


def state_manifest(state: Mapping[str, torch.Tensor]) -> Manifest:
    """Names, dtypes and shapes of a state dict, as a model file would list them."""
    specs = []
    for name, tensor in state.items():
        dtype = SAFETENSORS_DTYPES.get(tensor.dtype)
        if dtype is None:
            raise TensorFileError(
                f"tensor {name!r} has dtype {tensor.dtype}, which model files cannot hold"
            )
        specs.append(TensorSpec(name, dtype, tuple(tensor.shape)))
    return Manifest(tuple(specs))


def check_fits(expected: Manifest, found: Manifest, what: str) -> None:
    """Refuse a model file whose tensors differ from the model's in any name, dtype or shape.

    Loading would otherwise silently cast dtypes or fail later with a torch
    error that names no file.
    """
    problems = expected.differences(found)
    if problems:
        raise TensorFileError(f"{what} does not fit the model: {'; '.join(problems)}")


def save_state(state: Mapping[str, torch.Tensor], path: Path, durable: bool = True) -> None:
    """Write a state dict as safetensors, atomically (and durably unless told otherwise).

    Tensors that share storage (tied weights) are cloned, because
    safetensors refuses shared memory, and every name must still be saved so
    that the file lists exactly the keys of the model's state dict.
    """
    tensors: dict[str, torch.Tensor] = {}
    storages: set[int] = set()
    for name, tensor in state.items():
        value = tensor.detach().to("cpu").contiguous()
        storage = value.untyped_storage().data_ptr()
        if storage in storages:
            value = value.clone()
        storages.add(storage)
        tensors[name] = value
    atomic_produce(
        path, lambda tmp: save_file(tensors, str(tmp), metadata={"format": "pt"}), durable
    )


def load_state(model: nn.Module, path: Path, expected: Manifest) -> None:
    """Load a safetensors model file into ``model`` after checking that it fits."""
    check_fits(expected, TensorFile(path).manifest, path.name)
    model.load_state_dict(load_file(str(path)), strict=True)


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
            f"{SERVER_CONFIG}: initial_checkpoint {path}: cannot read it ({exc})"
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


def init_model(app_dir: Path, out: Path, seed: int | None = None) -> Manifest:
    """Build the app's initial global model and write it to ``out``.

    Args:
        app_dir: The app folder (config/ and resources/).
        out: The safetensors file to write.
        seed: Seed of torch's generator; config_train.json's ``seed`` when None,
            so that the same app always starts from the same weights.

    Returns:
        The tensors written.
    """
    app = load_app(app_dir)
    use_resources(app.resources)
    torch.manual_seed(app.train.seed if seed is None else seed)
    model = build_model(app.train.model)
    expected = state_manifest(model.state_dict())
    checkpoint = app.server.initial_checkpoint if app.server else None
    if checkpoint:
        path = app_dir / checkpoint
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
        prog="python -m flcore.modelinit", description="Write an app's initial global model."
    )
    parser.add_argument("--app", type=Path, required=True, help="the app folder")
    parser.add_argument("--out", type=Path, required=True, help="the safetensors file to write")
    parser.add_argument("--seed", type=int, default=None, help="torch seed (default: the app's)")
    args = parser.parse_args(argv)
    try:
        manifest = init_model(args.app, args.out, args.seed)
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
    sys.exit(main())
