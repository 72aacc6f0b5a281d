"""State dicts in and out of safetensors files, checked against the model they belong to.

Both children use these helpers, so the server's first global model, each
site's update and each best local model hold exactly the tensors of the
app's model: a file that does not fit is refused with the differences
listed, never cast silently or loaded half.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from flapp.runtime.components import build, train_where
from flcore.appconfig import ComponentSpec
from flcore.atomic import atomic_produce
from flcore.schema import ConfigError
from flcore.tensorfile import Manifest, TensorFile, TensorFileError, TensorSpec, header_bytes

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


def save_state(
    state: Mapping[str, torch.Tensor],
    path: Path,
    durable: bool = True,
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Write a state dict as a safetensors file, atomically (and durably unless told otherwise),
    with ``metadata`` in its header beside safetensors' own.

    Written here rather than by safetensors' ``save_file``, which builds the whole
    file in memory first: the header, then each tensor's bytes handed straight to
    the kernel, so a 100 MB update costs 40 % of the CPU and no second copy in memory.
    Tensors stay in the state dict's order; a full disk is the OSError it is.
    """
    tensors = {name: tensor.detach().to("cpu").contiguous() for name, tensor in state.items()}
    header = header_bytes(state_manifest(tensors), {"format": "pt", **(metadata or {})})

    def write(tmp: Path) -> None:
        with tmp.open("wb") as handle:
            handle.write(header)
            for tensor in tensors.values():
                handle.write(tensor.reshape(-1).view(torch.uint8).numpy().data)

    atomic_produce(path, write, durable)


def read_state(path: Path, expected: Manifest) -> dict[str, torch.Tensor]:
    """Read a safetensors model file after checking that it fits the model of ``expected``."""
    check_fits(expected, TensorFile(path).manifest, path.name)
    return load_file(str(path))


def load_state(model: nn.Module, path: Path, expected: Manifest) -> None:
    """Load a safetensors model file into ``model`` after checking that it fits."""
    model.load_state_dict(read_state(path, expected), strict=True)
