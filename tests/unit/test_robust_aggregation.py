"""The defences against poisoned updates: coordinate-wise median and trimmed mean streamed from
kept files, norm clipping, outlier scores, and the config keys that choose them."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import safetensors.numpy
import safetensors.torch
import torch

from flcore.appconfig import ServerAppConfig, parse_server_config
from flcore.feed import RunInfo
from flcore.feedwire import run_from_proto, run_to_proto
from flcore.schema import ConfigError
from flcore.tensorfile import TensorFile
from flserverd import aggregator
from flserverd.aggregator import (
    SLAB_ELEMENTS,
    Aggregator,
    CoordinateWise,
    FedAvg,
    UpdateStats,
    make_aggregator,
    median,
    trimmed_mean,
)
from flserverd.statedb import RoundSummary
from flserverd.views import round_record

Arrays = dict[str, np.ndarray[Any, Any]]


def save(path: Path, tensors: Arrays) -> TensorFile:
    safetensors.numpy.save_file(tensors, path)
    return TensorFile(path)


def honest_round(tmp_path: Path, count: int, size: int = 50, seed: int = 3) -> tuple[Path, Arrays]:
    """The round's input model and ``count`` honest updates: input + a shared step + noise."""
    rng = np.random.default_rng(seed)
    base = rng.normal(size=size).astype(np.float32)
    step = rng.normal(size=size).astype(np.float32) * 0.1
    reference = tmp_path / "input.safetensors"
    save(reference, {"w": base})
    updates = {
        f"site{i}": (base + step + rng.normal(size=size).astype(np.float32) * 0.02)
        for i in range(count)
    }
    return reference, updates


def combine(
    tmp_path: Path,
    make: Any,
    reference: Path,
    updates: Arrays,
    order: list[str] | None = None,
    weights: dict[str, float] | None = None,
) -> tuple[np.ndarray[Any, Any], dict[str, UpdateStats], Aggregator]:
    """Add the updates (as one-tensor models) in ``order`` and write the result."""
    spool = tmp_path / "spool"
    spool.mkdir(exist_ok=True)
    agg: Aggregator = make(TensorFile(reference).manifest, reference)
    for name in order or sorted(updates):
        update = save(spool / f"{name}.incoming", {"w": updates[name]})
        agg.add(name, update, (weights or {}).get(name, 1.0))
    target = tmp_path / "out.safetensors"
    stats = agg.write(target)
    return safetensors.numpy.load_file(target)["w"], stats, agg


def coordinate_wise(rule: aggregator.Rule, keep: Path, clip: float | None = None) -> Any:
    return lambda manifest, reference: CoordinateWise(manifest, reference, rule, keep, clip)


def test_median_is_the_unweighted_coordinate_wise_median(tmp_path: Path) -> None:
    reference, updates = honest_round(tmp_path, 5)
    updates["site4"] = updates["site4"] * 100  # a poisoner, claiming most of the data
    weights = {"site4": 1000.0}
    result, _, _ = combine(
        tmp_path, coordinate_wise(median, tmp_path / "keep"), reference, updates, weights=weights
    )
    stacked = np.stack([updates[n] for n in sorted(updates)])
    np.testing.assert_array_equal(result, np.median(stacked, axis=0).astype(np.float32))
    honest = np.stack([updates[f"site{i}"] for i in range(4)])
    assert np.abs(result - honest.mean(axis=0)).max() < 0.1


def test_median_of_an_even_count_is_the_middle_mean(tmp_path: Path) -> None:
    reference = tmp_path / "input.safetensors"
    save(reference, {"w": np.zeros(3, np.float32)})
    updates = {f"s{i}": np.full(3, float(v), np.float32) for i, v in enumerate([1, 9, 3, 5])}
    result, _, _ = combine(tmp_path, coordinate_wise(median, tmp_path / "k"), reference, updates)
    assert result.tolist() == [4.0, 4.0, 4.0]


def test_trimmed_mean_drops_the_extremes_per_coordinate(tmp_path: Path) -> None:
    reference = tmp_path / "input.safetensors"
    save(reference, {"w": np.zeros(2, np.float32)})
    values = {"a": [1, -50], "b": [2, 2], "c": [3, 4], "d": [4, 6], "e": [1000, 8]}
    updates = {k: np.array(v, np.float32) for k, v in values.items()}
    rule = trimmed_mean(0.2)  # 5 updates: one dropped at each end
    result, _, _ = combine(tmp_path, coordinate_wise(rule, tmp_path / "k"), reference, updates)
    assert result.tolist() == [3.0, 4.0]  # means of [2, 3, 4] and [2, 4, 6]
    nothing_trimmed, _, _ = combine(
        tmp_path, coordinate_wise(trimmed_mean(0.1), tmp_path / "k2"), reference, updates
    )
    np.testing.assert_allclose(nothing_trimmed, [202.0, -6.0])


def test_robust_rules_stream_windows_across_tensors_and_dtypes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Windows of 7 elements: every tensor spans several, and the last one is short.
    monkeypatch.setattr(aggregator, "WINDOW_BYTES", 7 * 4 * 3)
    monkeypatch.setattr(aggregator, "MIN_WINDOW_ELEMENTS", 1)
    gen = torch.Generator().manual_seed(5)
    models = [
        {
            "w": torch.randn(5, 9, generator=gen),
            "half": torch.randn(23, generator=gen).to(torch.bfloat16),
            "steps": torch.tensor([3 + i, 10 * i], dtype=torch.int64),
            "mask": torch.tensor([i == 0, True, i > 0]),
            "empty": torch.zeros(0, 2),
        }
        for i in range(3)
    ]
    reference = tmp_path / "input.safetensors"
    safetensors.torch.save_file(models[0], reference)
    manifest = TensorFile(reference).manifest
    agg = CoordinateWise(manifest, reference, median, tmp_path / "keep")
    for i, model in enumerate(models):
        safetensors.torch.save_file(model, tmp_path / f"u{i}")
        agg.add(f"s{i}", TensorFile(tmp_path / f"u{i}"), 1.0)
    agg.write(tmp_path / "out")
    result = safetensors.torch.load_file(tmp_path / "out")
    for name in ("w", "half"):
        stacked = torch.stack([m[name].float() for m in models])
        expected = stacked.median(dim=0).values.to(models[0][name].dtype)
        assert torch.equal(result[name], expected), name
    assert result["steps"].tolist() == [4, 10]
    assert result["mask"].tolist() == [False, True, True]
    assert result["empty"].shape == (0, 2)


def test_robust_result_does_not_depend_on_arrival_order(tmp_path: Path) -> None:
    reference, updates = honest_round(tmp_path, 6, size=200)
    names = sorted(updates)
    for rule in (median, trimmed_mean(0.2)):
        first, _, _ = combine(tmp_path, coordinate_wise(rule, tmp_path / "a"), reference, updates)
        again, _, _ = combine(
            tmp_path, coordinate_wise(rule, tmp_path / "b"), reference, updates, names[::-1]
        )
        assert first.tobytes() == again.tobytes()


def test_kept_files_live_in_the_round_folder_until_discarded(tmp_path: Path) -> None:
    reference, updates = honest_round(tmp_path, 3)
    keep = tmp_path / "keep"
    agg = CoordinateWise(TensorFile(reference).manifest, reference, median, keep)
    incoming = save(tmp_path / "upload-123.safetensors", {"w": updates["site0"]})
    agg.add("site0", incoming, 2.0)
    assert not incoming.path.exists()  # moved, not copied
    assert sorted(p.name for p in keep.iterdir()) == ["site0.safetensors"]
    with pytest.raises(ValueError, match="already added"):
        agg.add("site0", save(tmp_path / "again", {"w": updates["site0"]}), 2.0)
    agg.write(tmp_path / "out.safetensors")
    assert keep.exists()  # the controller discards once the round is committed
    agg.discard()
    assert not keep.exists()


def test_median_memory_is_windows_not_models(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(aggregator, "WINDOW_BYTES", 2 * 1024 * 1024)
    size = SLAB_ELEMENTS * 4
    model_bytes = size * 4
    reference = tmp_path / "input.safetensors"
    save(reference, {"w": np.zeros(size, np.float32)})
    agg = CoordinateWise(TensorFile(reference).manifest, reference, median, tmp_path / "keep")
    for i in range(8):
        agg.add(f"s{i}", save(tmp_path / f"u{i}", {"w": np.full(size, i, np.float32)}), 1.0)
    tracemalloc.start()
    try:
        agg.write(tmp_path / "out.safetensors")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # eight models are combined with less memory than one of them
    assert 2 * 1024 * 1024 <= peak < model_bytes / 2
    assert float(safetensors.numpy.load_file(tmp_path / "out.safetensors")["w"][-1]) == 3.5


def test_clipping_scales_a_large_update_back_onto_the_bound(tmp_path: Path) -> None:
    reference = tmp_path / "input.safetensors"
    base = np.ones(4, np.float32)
    save(reference, {"w": base})
    updates = {
        "small": base + np.array([0.3, 0, 0, 0.4], np.float32),  # norm 0.5: kept as it is
        "huge": base + np.array([0, 60, 80, 0], np.float32),  # norm 100: scaled to 2
    }

    def fedavg(manifest: Any, ref: Path) -> FedAvg:
        return FedAvg(manifest, ref, tmp_path / "sum", clip_norm=2.0)

    result, stats, _ = combine(tmp_path, fedavg, reference, updates)
    clipped_huge = base + np.array([0, 1.2, 1.6, 0], np.float32)
    np.testing.assert_allclose(result, (updates["small"] + clipped_huge) / 2, rtol=1e-6)
    assert stats["huge"].norm == pytest.approx(100.0)
    assert stats["small"].norm == pytest.approx(0.5)
    clipped_median, _, _ = combine(
        tmp_path, coordinate_wise(median, tmp_path / "keep", clip=2.0), reference, updates
    )
    np.testing.assert_allclose(clipped_median, (updates["small"] + clipped_huge) / 2, rtol=1e-6)


def test_clipping_leaves_integer_tensors_alone(tmp_path: Path) -> None:
    reference = tmp_path / "input.safetensors"
    save(reference, {"w": np.zeros(2, np.float32), "n": np.array([10], np.int64)})
    spool = tmp_path / "u"
    agg = FedAvg(TensorFile(reference).manifest, reference, tmp_path / "sum", clip_norm=1.0)
    agg.add("a", save(spool, {"w": np.array([30, 40], np.float32), "n": np.array([90])}), 1.0)
    agg.write(tmp_path / "out")
    result = safetensors.numpy.load_file(tmp_path / "out")
    np.testing.assert_allclose(result["w"], [0.6, 0.8], atol=1e-5)  # float32 of 30 - 29.4
    assert result["n"].tolist() == [90]


@pytest.mark.parametrize("poison", ["scaled", "sign-flipped"])
@pytest.mark.parametrize("rule", ["fedavg", "median", "trimmed_mean"])
def test_a_poisoned_update_has_the_highest_outlier_score(
    tmp_path: Path, poison: str, rule: str
) -> None:
    reference, updates = honest_round(tmp_path, 5, size=300)
    base = safetensors.numpy.load_file(reference)["w"]
    step = updates["site4"] - base
    updates["site4"] = base + (100 * step if poison == "scaled" else -3 * step)
    config = ServerAppConfig(aggregator=rule, trim_fraction=0.2)

    def make(manifest: Any, ref: Path) -> Aggregator:
        return make_aggregator(config, manifest, ref, tmp_path / "keep")

    _, stats, _ = combine(tmp_path, make, reference, updates)
    assert sorted(stats) == sorted(updates)
    honest = [stats[f"site{i}"].score for i in range(4)]
    assert stats["site4"].score > 3.0
    assert max(honest) < 2.0 and min(honest) > 0.2
    if rule != "fedavg":  # plain FedAvg does not measure norms (below)
        norms = {name: s.norm or 0.0 for name, s in stats.items()}
        assert norms["site4"] > max(norms[f"site{i}"] for i in range(4))


def test_plain_fedavg_reads_each_update_once_and_never_the_input_model(tmp_path: Path) -> None:
    reference, updates = honest_round(tmp_path, 3)
    manifest = TensorFile(reference).manifest
    gone = tmp_path / "not-there.safetensors"  # any read of the input model would fail
    agg = FedAvg(manifest, gone, tmp_path / "sum")
    for name, values in sorted(updates.items()):
        agg.add(name, save(tmp_path / f"{name}.st", {"w": values}), 1.0)
    stats = agg.write(tmp_path / "out.safetensors")
    assert {s.norm for s in stats.values()} == {None}
    assert list(stats["site0"].as_json()) == ["score"]
    np.testing.assert_allclose(
        safetensors.numpy.load_file(tmp_path / "out.safetensors")["w"],
        np.mean([updates[n] for n in sorted(updates)], axis=0),
        rtol=1e-6,
    )


def test_scores_are_sampled_for_a_large_model(tmp_path: Path) -> None:
    size = aggregator.SAMPLE_SIZE * 50
    reference, updates = honest_round(tmp_path, 4, size=size)
    updates["site3"] = updates["site3"] * 40
    result, stats, _ = combine(
        tmp_path, coordinate_wise(median, tmp_path / "k"), reference, updates
    )
    assert stats["site3"].score > 10 and max(stats[f"site{i}"].score for i in range(3)) < 2
    assert result.size == size


def test_one_update_scores_zero(tmp_path: Path) -> None:
    reference, updates = honest_round(tmp_path, 1)
    _, stats, _ = combine(tmp_path, coordinate_wise(median, tmp_path / "k"), reference, updates)
    assert stats["site0"].score == 0.0 and stats["site0"].norm is not None
    assert json.dumps(stats["site0"].as_json())


def test_an_overflowing_norm_is_reported_as_a_finite_number() -> None:
    assert UpdateStats(float("inf"), 2.0).as_json()["norm"] == np.finfo(np.float64).max


BASE = {"num_rounds": 3, "min_num_clients": 2, "max_num_clients": 10}


def parse(**keys: Any) -> ServerAppConfig:
    return parse_server_config({**BASE, **keys})


def test_defence_keys_are_read() -> None:
    assert parse().aggregator == "fedavg" and parse().clip_update_norm is None
    config = parse(aggregator="trimmed_mean", trim_fraction=0.2, clip_update_norm=5)
    assert (config.aggregator, config.trim_fraction, config.clip_update_norm) == (
        "trimmed_mean",
        0.2,
        5.0,
    )
    assert isinstance(config.clip_update_norm, float)
    assert parse(aggregator="median").aggregator == "median"
    assert parse().keep_round_models == 1
    assert parse(keep_round_models=3).keep_round_models == 3


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"aggregator": "krum"}, "'aggregator' must be one of fedavg, median, trimmed_mean"),
        ({"aggregator": "trimmed_mean", "trim_fraction": 0.5}, "must be at least 0 and below 0.5"),
        ({"aggregator": "trimmed_mean", "trim_fraction": -0.1}, "below 0.5"),
        (
            {"aggregator": "median", "trim_fraction": 0.2},
            "applies to the aggregator 'trimmed_mean'",
        ),
        ({"trim_fraction": 0.2}, "(the aggregator is 'fedavg')"),
        ({"aggregator": "trimmed_mean", "trim_fraction": 0.05}, "trims nothing even with"),
        ({"clip_update_norm": 0}, "'clip_update_norm' must be above 0"),
        ({"clip_update_norm": "10"}, "'clip_update_norm' must be a number or null"),
        ({"keep_round_models": 0}, "'keep_round_models' must be at least 1"),
        ({"keep_round_models": 2.5}, "'keep_round_models' must be an integer"),
        ({"keep_round_models": True}, "'keep_round_models' must be an integer"),
    ],
)
def test_defence_keys_are_checked_with_clear_errors(keys: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse(**keys)
    assert message in str(caught.value)
    assert "config_fed_server.json" in str(caught.value)


def test_the_feed_shows_the_highest_outlier_scores_of_a_round() -> None:
    updates = {f"site{i}": UpdateStats(1.0, float(i)) for i in range(8)}
    summary = RoundSummary(1, 4, 10.0, sorted(updates), {"acc": 0.9}, 2.0, 80, updates=updates)
    record = round_record(summary)
    assert record.outliers == {f"site{i}": float(i) for i in (7, 6, 5, 4, 3)}
    received = run_from_proto(run_to_proto(RunInfo(run_number=1, history=(record,))))
    assert received.history == (record,)
