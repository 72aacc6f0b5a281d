"""The listing records: what the server writes as a reply's data reads back as the same
records, and data of another shape (a server of another version) reads as empty fields,
never as an error."""

from __future__ import annotations

import json
from dataclasses import asdict

from flcore.listingrecords import (
    AdminActivity,
    AdminLine,
    AppLine,
    LinesPage,
    PageCount,
    RoundLine,
    RunLine,
    RunPage,
    SiteResult,
    admins_page,
    apps_page,
    runs_page,
)

RUN = RunLine(3, "digits", "4/10", "stopped", "aborted", "val_acc=0.9 (round 3)", 1.5e9, 1.6e9)


def wire(data: object) -> dict[str, object]:
    """The data as it arrives: through JSON."""
    loaded = json.loads(json.dumps(data))
    assert isinstance(loaded, dict)
    return loaded


def test_what_the_server_writes_reads_back_as_the_same_records() -> None:
    page = {"page": 2, "pages": 3, "total": 120}
    runs = runs_page(wire({"runs": [asdict(RUN)], **page}))
    assert runs == LinesPage(PageCount(2, 3, 120), (RUN,))
    round_line = RoundLine(
        1, {"val_loss": 0.5}, 2.5, False, {"site-a": SiteResult(12, {"val_loss": 0.25})}
    )
    run = RunPage.from_json(wire({"run": asdict(RUN), "rounds": [asdict(round_line)], **page}))
    assert run == RunPage(PageCount(2, 3, 120), RUN, (round_line,))
    app = AppLine("digits", 9216, 5, "3f1c" * 16, 1.7e9)
    assert apps_page(wire({"apps": [asdict(app)], **page})).lines == (app,)
    admin = AdminLine(
        "lead@x.org", AdminActivity("super", 2, 1, 1.7e9, "check_status", 1.7e9, True)
    )
    admins = admins_page(wire({"admins": [admin.as_json()], **page}))
    assert admins.lines == (admin,)
    assert admin.as_json()["user"] == "lead@x.org" and admin.as_json()["role"] == "super"


def test_data_of_another_shape_reads_as_empty_fields() -> None:
    runs = runs_page(
        {"runs": [7, {"run_number": "x", "app": None, "started_at": True}], "pages": "3"}
    )
    assert runs.count == PageCount(1, 1, None)
    assert runs.lines == (RunLine(0, "", "", "", "", "", 0.0, 0.0),)
    run = RunPage.from_json(
        {"run": [], "rounds": [{"round": 2, "metrics": {"a": "high", "b": 1}, "sites": {"s": 3}}]}
    )
    assert run.run == RunLine.from_json({})
    assert run.rounds == (RoundLine(2, {"b": 1.0}),)
    assert apps_page({"apps": "all"}).lines == ()
    assert admins_page({}).count == PageCount()
