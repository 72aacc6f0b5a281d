"""flserverd.aggregator: FedAvg (a sample-weighted mean folded one update at a time), the
robust rules, clipping and outlier scores."""

from __future__ import annotations

import os
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import safetensors.numpy
import safetensors.torch
import torch

from flapp.runtime.modelfile import save_state
from flcore.tensorfile import TensorFile
from flserverd.aggregator import RUNNING_SUM, SLAB_ELEMENTS, FedAvg

WEIGHTS = [1.0, 3.0, 2.5]


def _save(path: Path, tensors: dict[str, torch.Tensor]) -> TensorFile:
    safetensors.torch.save_file(tensors, path)
    return TensorFile(path)


def _written(path: Path, tensors: dict[str, torch.Tensor]) -> Path:
    """A model file in the state dict's order, as flstack's children write it."""
    save_state(tensors, path, durable=False)
    return path


def _updates(tmp_path: Path, models: list[dict[str, torch.Tensor]]) -> list[TensorFile]:
    return [_save(tmp_path / f"update_{i}.safetensors", m) for i, m in enumerate(models)]


def _average(updates: list[TensorFile], weights: list[float], target: Path) -> FedAvg:
    fedavg = FedAvg(updates[0].manifest, updates[0].path, target.parent / "sum")
    for update, weight in zip(updates, weights, strict=True):
        fedavg.add(update.path.stem, update, weight)
    fedavg.write(target)
    return fedavg


def _reference(models: list[dict[str, torch.Tensor]], name: str) -> np.ndarray[Any, Any]:
    total = sum(WEIGHTS[: len(models)])
    acc = sum(m[name].to(torch.float64).numpy() * w for m, w in zip(models, WEIGHTS, strict=False))
    return np.asarray(acc) / total


def _models(dtype: torch.dtype, shape: tuple[int, ...], count: int = 3) -> list[dict[str, Any]]:
    gen = torch.Generator().manual_seed(11)
    return [{"w": (torch.randn(shape, generator=gen) * 4).to(dtype)} for _ in range(count)]


@pytest.mark.parametrize(
    ("dtype", "rtol", "atol"),
    [
        (torch.float64, 1e-12, 1e-12),
        (torch.float32, 1e-6, 1e-6),
        (torch.float16, 1e-3, 1e-3),
        (torch.bfloat16, 2**-8, 1e-2),
    ],
)
def test_float_average_matches_numpy(
    tmp_path: Path, dtype: torch.dtype, rtol: float, atol: float
) -> None:
    models = _models(dtype, (17, 9))
    target = tmp_path / "avg.safetensors"
    _average(_updates(tmp_path, models), WEIGHTS, target)

    result = safetensors.torch.load_file(target)["w"]
    assert result.dtype == dtype
    assert result.shape == (17, 9)
    expected = _reference(models, "w")
    np.testing.assert_allclose(result.to(torch.float64).numpy(), expected, rtol=rtol, atol=atol)
    # and it really is a mean, not the first update or a plain sum
    assert not torch.equal(result, models[0]["w"])


def test_bf16_rounds_to_nearest(tmp_path: Path) -> None:
    # 1.0078125 is the next bf16 after 1.0; the 1:3 mean 1.005859375 is nearer to it
    # (truncating the float32 bits instead of rounding would give 1.0).
    lo, hi = (
        torch.tensor([1.0], dtype=torch.bfloat16),
        torch.tensor([1.0078125], dtype=torch.bfloat16),
    )
    updates = _updates(tmp_path, [{"w": lo}, {"w": hi}])
    target = tmp_path / "avg.safetensors"
    fedavg = FedAvg(updates[0].manifest, updates[0].path, tmp_path / "sum")
    fedavg.add(updates[0].path.stem, updates[0], 1.0)
    fedavg.add(updates[1].path.stem, updates[1], 3.0)
    fedavg.write(target)
    assert safetensors.torch.load_file(target)["w"].item() == 1.0078125


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8])
def test_integer_tensors_are_rounded(tmp_path: Path, dtype: torch.dtype) -> None:
    a = torch.tensor([0, 10, 7, 1, 100], dtype=dtype)
    b = torch.tensor([4, 20, 7, 2, 101], dtype=dtype)
    updates = _updates(tmp_path, [{"n": a}, {"n": b}])
    target = tmp_path / "avg.safetensors"
    fedavg = FedAvg(updates[0].manifest, updates[0].path, tmp_path / "sum")
    fedavg.add(updates[0].path.stem, updates[0], 1.0)
    fedavg.add(updates[1].path.stem, updates[1], 3.0)
    fedavg.write(target)
    result = safetensors.torch.load_file(target)["n"]
    assert result.dtype == dtype
    # (a + 3b) / 4 = [3, 17.5, 7, 1.75, 100.75] -> rounded half to even
    assert result.tolist() == [3, 18, 7, 2, 101]


def test_large_int64_is_exact(tmp_path: Path) -> None:
    big = 2**40 + 3
    updates = _updates(
        tmp_path, [{"n": torch.tensor([big], dtype=torch.int64)}, {"n": torch.tensor([big])}]
    )
    target = tmp_path / "avg.safetensors"
    _average(updates, [1.0, 3.0], target)
    assert safetensors.torch.load_file(target)["n"].item() == big


@pytest.mark.parametrize(
    ("dtype", "value"),
    [(torch.int32, 123_456_789), (torch.int32, 2**31 - 1), (torch.int64, 2**63 - 1)],
)
def test_an_integer_every_site_sends_is_the_average(
    tmp_path: Path, dtype: torch.dtype, value: int
) -> None:
    """Summed in float32, 123456789 came out 123456792; at the top of their range values
    wrapped to the bottom (INT32_MAX became INT32_MIN)."""
    updates = _updates(tmp_path, [{"n": torch.tensor([value], dtype=dtype)}] * 2)
    target = tmp_path / "avg.safetensors"
    _average(updates, [1.0, 3.0], target)
    result = safetensors.torch.load_file(target)["n"].item()
    # float64 holds 2^63 - 1 only as 2^63 - 1024: near its top, never wrapped to the bottom
    assert result == value or (value == 2**63 - 1 and result >= 2**63 - 1024)


def test_bool_takes_weighted_majority(tmp_path: Path) -> None:
    a = torch.tensor([True, True, False, False])
    b = torch.tensor([True, False, True, False])
    updates = _updates(tmp_path, [{"m": a}, {"m": b}])
    target = tmp_path / "avg.safetensors"
    _average(updates, [1.0, 3.0], target)
    result = safetensors.torch.load_file(target)["m"]
    assert result.dtype == torch.bool
    assert result.tolist() == [True, False, True, False]
    # the heavier side wins the other way round too
    _average(updates, [3.0, 1.0], target)
    assert safetensors.torch.load_file(target)["m"].tolist() == [True, True, False, False]


def test_mixed_model_with_empty_and_scalar(tmp_path: Path) -> None:
    models = [
        {
            "w": torch.full((3, 2), float(i)),
            "empty": torch.zeros((0, 4)),
            "step": torch.tensor(10 * (i + 1), dtype=torch.int64),
            "bf": torch.full((5,), float(i + 1), dtype=torch.bfloat16),
        }
        for i in range(2)
    ]
    updates = _updates(tmp_path, models)
    target = tmp_path / "avg.safetensors"
    _average(updates, [1.0, 3.0], target)
    result = safetensors.torch.load_file(target)
    assert result["w"].tolist() == [[0.75, 0.75]] * 3
    assert result["empty"].shape == (0, 4)
    assert result["step"].item() == 18  # (10 + 60) / 4 = 17.5 -> 18
    assert result["bf"].tolist() == [1.75] * 5


def test_large_tensor_folded_in_slabs(tmp_path: Path) -> None:
    size = SLAB_ELEMENTS * 2 + 12_345
    a = np.arange(size, dtype=np.float32)
    b = np.full(size, 2.0, dtype=np.float32)
    safetensors.numpy.save_file({"w": a, "s": np.ones(3, np.float32)}, tmp_path / "a.st")
    safetensors.numpy.save_file({"w": b, "s": np.ones(3, np.float32)}, tmp_path / "b.st")
    updates = [TensorFile(tmp_path / "a.st"), TensorFile(tmp_path / "b.st")]
    target = tmp_path / "avg.safetensors"
    _average(updates, [1.0, 3.0], target)
    result = safetensors.numpy.load_file(target)["w"]
    expected = (a.astype(np.float64) + 3 * b) / 4
    np.testing.assert_allclose(result, expected, rtol=1e-6)
    # every slab boundary and the tail are right
    for index in (0, SLAB_ELEMENTS - 1, SLAB_ELEMENTS, 2 * SLAB_ELEMENTS, size - 1):
        assert result[index] == pytest.approx(expected[index], rel=1e-6), index


def test_write_is_atomic_and_valid(tmp_path: Path) -> None:
    models = _models(torch.float32, (4,), 2)
    updates = _updates(tmp_path, models)
    out = tmp_path / "out"
    out.mkdir()
    target = out / "round_1.safetensors"
    target.write_bytes(b"previous model")
    reader = out / "reader_view"
    os.link(target, reader)  # a reader that opened the old file

    fedavg = FedAvg(updates[0].manifest, updates[0].path, tmp_path / "sum")
    fedavg.add(updates[0].path.stem, updates[0], 1.0)
    fedavg.add(updates[1].path.stem, updates[1], 3.0)
    fedavg.write(target, {"run": "2", "round": "1"})

    assert sorted(p.name for p in out.iterdir()) == ["reader_view", "round_1.safetensors"]
    assert reader.read_bytes() == b"previous model"  # replaced by rename, not rewritten
    written = TensorFile(target)
    assert written.metadata == {"run": "2", "round": "1"}
    assert written.manifest == updates[0].manifest
    loaded = safetensors.torch.load_file(target)
    expected = (models[0]["w"].double() + 3 * models[1]["w"].double()) / 4
    np.testing.assert_allclose(loaded["w"].double().numpy(), expected.numpy(), rtol=1e-6)


def test_updates_may_lay_their_tensors_out_in_any_order(tmp_path: Path) -> None:
    """flstack's children write a state dict's order, safetensors' writer sorts by dtype and
    name: an update from either (a site of another version) folds the same, and one that
    lacks a tensor is refused naming it."""
    gen = torch.Generator().manual_seed(3)
    models = [
        {"b": torch.randn(5, generator=gen), "a": torch.randn(2, 3, generator=gen)}
        for _ in range(2)
    ]
    model = tmp_path / "model.safetensors"
    input_model = TensorFile(_written(model, models[0]))
    sorted_update = _save(tmp_path / "sorted.safetensors", models[1])
    assert [t.name for t in sorted_update.manifest.tensors] == ["a", "b"]
    assert [t.name for t in input_model.manifest.tensors] == ["b", "a"]
    fedavg = FedAvg(input_model.manifest, input_model.path, tmp_path / "sum")
    fedavg.add("kept-order", input_model, 1.0)
    fedavg.add("sorted", sorted_update, 3.0)
    target = tmp_path / "avg.safetensors"
    fedavg.write(target)
    result = safetensors.torch.load_file(target)
    for name in ("a", "b"):
        expected = (models[0][name] * 1.0 + models[1][name] * 3.0) / 4.0
        torch.testing.assert_close(result[name], expected)
    lacking = _save(tmp_path / "lacking.safetensors", {"a": models[1]["a"]})
    other = FedAvg(input_model.manifest, input_model.path, tmp_path / "sum2")
    with pytest.raises(ValueError, match="missing tensor 'b'"):
        other.add("lacking", lacking, 1.0)


def test_write_without_updates_refused(tmp_path: Path) -> None:
    updates = _updates(tmp_path, _models(torch.float32, (4,), 1))
    fedavg = FedAvg(updates[0].manifest, updates[0].path, tmp_path / "sum")
    with pytest.raises(ValueError, match="no update"):
        fedavg.write(tmp_path / "avg.safetensors")
    assert not (tmp_path / "avg.safetensors").exists()
    assert [p for p in tmp_path.iterdir() if p.suffix == ".tmp"] == []


@pytest.mark.parametrize("weight", [0.0, -1.0, -1e-9])
def test_non_positive_weight_refused(tmp_path: Path, weight: float) -> None:
    updates = _updates(tmp_path, _models(torch.float32, (4,), 2))
    fedavg = FedAvg(updates[0].manifest, updates[0].path, tmp_path / "sum")
    fedavg.add(updates[0].path.stem, updates[0], 2.0)
    with pytest.raises(ValueError, match="must be positive"):
        fedavg.add(updates[1].path.stem, updates[1], weight)
    assert fedavg.count == 1
    assert fedavg.total_weight == 2.0
    target = tmp_path / "avg.safetensors"
    fedavg.write(target)
    assert torch.equal(
        safetensors.torch.load_file(target)["w"], _models(torch.float32, (4,), 2)[0]["w"]
    )


def test_the_running_sum_is_one_file_in_the_round_folder(tmp_path: Path) -> None:
    """The sum is not held in memory: one file of float32 per element, summed in place."""
    models = [
        {"a": torch.full((64, 64), float(i)), "b": torch.full((7,), float(i), dtype=torch.float16)}
        for i in range(6)
    ]
    updates = _updates(tmp_path, models)
    folder = tmp_path / "round_3"
    fedavg = FedAvg(updates[0].manifest, updates[0].path, folder)
    fedavg.add(updates[0].path.stem, updates[0], 1.0)
    running = folder / RUNNING_SUM
    inode = running.stat().st_ino
    for update in updates[1:]:
        fedavg.add(update.path.stem, update, 1.0)
    assert [p.name for p in folder.iterdir()] == [RUNNING_SUM]
    assert running.stat().st_ino == inode  # summed in place
    assert running.stat().st_size == (64 * 64 + 7) * 4  # float32 sums, F16 included
    assert fedavg.count == 6 and fedavg.total_weight == 6.0
    sums = np.fromfile(running, dtype=np.float32)
    np.testing.assert_array_equal(sums, np.full(64 * 64 + 7, 15.0, np.float32))
    fedavg.discard()
    assert list(folder.iterdir()) == []


def test_fold_memory_does_not_grow_with_the_model_or_the_updates(tmp_path: Path) -> None:
    """Folding and writing hold a few slabs, not the model: the sum is a file."""
    size = SLAB_ELEMENTS * 5
    model_bytes = size * 4
    for i in range(3):
        safetensors.numpy.save_file(
            {"w": np.full(size, float(i), np.float32)}, tmp_path / f"u{i}.st"
        )
    updates = [TensorFile(tmp_path / f"u{i}.st") for i in range(3)]
    fedavg = FedAvg(updates[0].manifest, updates[0].path, tmp_path / "sum")
    tracemalloc.start()
    try:
        for update in updates:
            fedavg.add(update.path.stem, update, 1.0)
        fedavg.write(tmp_path / "avg.safetensors")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    slab_bytes = SLAB_ELEMENTS * 4
    assert peak >= slab_bytes  # a slab is seen, so the measurement works
    assert peak < 4 * slab_bytes < model_bytes
    result = safetensors.numpy.load_file(tmp_path / "avg.safetensors")["w"]
    np.testing.assert_array_equal(result, np.full(size, 1.0, np.float32))
