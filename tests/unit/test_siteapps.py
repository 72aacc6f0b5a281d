"""flclientd.siteapps: which deployed apps a site keeps, and which folders the rule may touch."""

from __future__ import annotations

from pathlib import Path

import pytest

from flclientd.siteapps import DeployedApp, instance_apps, retired_apps


def _apps(*runs: int) -> list[DeployedApp]:
    return [DeployedApp(n, Path(f"run_{n}/app_site-a"), "digits") for n in sorted(runs)[::-1]]


def _runs(apps: list[DeployedApp]) -> list[int]:
    return [app.run_number for app in apps]


@pytest.mark.parametrize(
    ("in_use", "keep", "removed"),
    [
        ({9}, 2, [6, 3, 2, 1]),  # the run deployed, and the two newest others
        ({9, 2}, 2, [6, 3, 1]),  # an old run the site trains (or rejoins) stays
        ({9}, 0, [8, 7, 6, 3, 2, 1]),
        ({9}, 10, []),
        ({3}, 2, [7, 6, 2, 1]),  # run 3 deployed again: the newest others are still 9 and 8
    ],
)
def test_a_site_keeps_the_apps_of_the_runs_it_uses_and_of_the_newest_others(
    in_use: set[int], keep: int, removed: list[int]
) -> None:
    apps = _apps(1, 2, 3, 6, 7, 8, 9)
    assert _runs(retired_apps(apps, in_use, keep)) == removed


def test_only_this_instances_app_folders_in_the_workspace_itself_are_candidates(
    tmp_path: Path,
) -> None:
    """Another instance of the kit in the same workspace trains on its own; a folder that
    site IT linked in (or a run folder moved to another disk) is theirs."""
    workspace = tmp_path / "site"
    elsewhere = tmp_path / "elsewhere"
    for folder in (
        workspace / "run_1" / "app_site-a",
        workspace / "run_1" / "app_site-a_2",
        workspace / "run_2" / "app_site-a",
        workspace / "run_2" / "work_site-a",
        elsewhere / "run_3" / "app_site-a",
        elsewhere / "app_site-a",
    ):
        folder.mkdir(parents=True)
    (workspace / "run_3").symlink_to(elsewhere / "run_3")
    (workspace / "run_4").mkdir()
    (workspace / "run_4" / "app_site-a").symlink_to(elsewhere / "app_site-a")
    (workspace / "run_5").mkdir()
    (workspace / "run_5" / "app_site-a").write_text("a file, not an app")

    found = instance_apps(workspace, "site-a")
    assert [app.folder for app in found] == [
        workspace / "run_2" / "app_site-a",
        workspace / "run_1" / "app_site-a",
    ]
