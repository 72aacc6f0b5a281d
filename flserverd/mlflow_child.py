"""The MLflow tracking child: reads what to log as JSON lines on stdin, logs it with MLflow.

Started by :class:`flserverd.tracking.Tracker`, the only place in flstack
that imports ``mlflow``, in a process of its own so that MLflow's import
time, threads, logging and a slow tracking server stay out of the server.
What it has to tell the server it writes to stdout as JSON lines
(``{"level": "warning", "message": ...}``); a failure to log is one such
warning, and the next message is tried again. MLflow's own output goes to
stderr, which the server keeps at DEBUG.

Messages (see the tracker): ``start`` (a run: where to log, its name, tags
and parameters; ``resume`` reuses the MLflow run recorded in the run's
folder), ``round`` (global metrics of a round, and the highest outlier
scores of its updates for the sites' nested runs), ``site`` (one site's
metrics of a round, logged in a run nested under the run and tagged with
the site), ``end`` (how it ended; the final and best global models as
artifacts) and ``close``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flcore.atomic import atomic_write_bytes

WARN_EVERY_S = 60.0
"""While the tracking server stays away, one warning a minute says how many calls failed."""
TO_SERVER = sys.stdout
"""The channel to the server; anything else printing goes to stderr (see main)."""


def say(level: str, message: str) -> None:
    """A line for the server's log."""
    TO_SERVER.write(json.dumps({"level": level, "message": message}) + "\n")
    TO_SERVER.flush()


@dataclass
class Run:
    """An MLflow run that logs one flstack run, and its sites' nested runs."""

    client: Any
    experiment_id: str
    run_id: str
    name: str
    record: Path
    tracking_uri: str
    tags: dict[str, str]
    sites: dict[str, str] = field(default_factory=dict)

    def save(self) -> None:
        """Remember the run ids, so a resumed run logs into the same MLflow runs."""
        data = {"tracking_uri": self.tracking_uri, "run_id": self.run_id, "sites": self.sites}
        # Durable: after a power loss an empty file would make the resumed run a new one.
        atomic_write_bytes(self.record, (json.dumps(data, indent=1) + "\n").encode())

    def site_run(self, site: str) -> str:
        """The nested run of a site (created the first time the site reports)."""
        if site not in self.sites:
            run = self.client.create_run(
                self.experiment_id,
                run_name=f"{self.name}/{site}",
                tags={**self.tags, "flstack.site": site, "mlflow.parentRunId": self.run_id},
            )
            self.sites[site] = run.info.run_id
            self.save()
        return self.sites[site]


class Logger:
    """Carries out the tracker's messages."""

    def __init__(self, mlflow: Any) -> None:
        self.mlflow = mlflow
        self.runs: dict[int, Run] = {}
        self.starts: dict[int, dict[str, Any]] = {}
        """Each run's start, tried again with its next message while it failed."""
        self.failures = 0
        """Calls failed since the last one that worked."""
        self.warned_at = 0.0
        self.warned = False

    def handle(self, message: dict[str, Any]) -> None:
        """One message; a failure becomes a warning (at most one a minute)."""
        try:
            getattr(self, f"on_{message['op']}")(message)
        except Exception as exc:  # whatever MLflow raises: the run goes on
            self.failures += 1
            now = time.monotonic()
            if now - self.warned_at >= WARN_EVERY_S:
                self.warned_at, self.warned = now, True
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:500]
                say(
                    "warning",
                    f"cannot log {message.get('op')} of run {message.get('run')} "
                    f"({self.failures} failed call(s) so far): {first}",
                )
        else:
            if self.warned and message["op"] != "close":
                say("info", f"logging works again after {self.failures} failed call(s)")
            self.failures, self.warned = 0, False

    def run(self, message: dict[str, Any]) -> Run:
        """The MLflow run of the message's run, started now if its start failed."""
        number = int(message["run"])
        if number not in self.runs:
            if number not in self.starts:
                raise RuntimeError("its start was never received")
            self.on_start(self.starts[number])
        return self.runs[number]

    def on_start(self, message: dict[str, Any]) -> None:
        self.starts[int(message["run"])] = message
        uri = str(message["tracking_uri"])
        client = self.mlflow.tracking.MlflowClient(tracking_uri=uri)
        name = str(message["experiment"])
        experiment = client.get_experiment_by_name(name)
        experiment_id = (
            experiment.experiment_id if experiment is not None else client.create_experiment(name)
        )
        record = Path(message["record"])
        tags = {str(k): str(v) for k, v in message["tags"].items()}
        known = _recorded(record, uri) if message["resume"] else {}
        run_id = str(known.get("run_id", ""))
        sites = {str(k): str(v) for k, v in dict(known.get("sites", {})).items()}
        if run_id:  # a run continued after it ended (an abort, a fault) logs on where it was
            for resumed in (run_id, *sites.values()):
                client.update_run(resumed, status="RUNNING")
        else:
            run_id = client.create_run(
                experiment_id, run_name=message["run_name"], tags=tags
            ).info.run_id
            params = [self.mlflow.entities.Param(k, str(v)) for k, v in message["params"].items()]
            client.log_batch(run_id, params=params)
        run = Run(client, experiment_id, run_id, str(message["run_name"]), record, uri, tags)
        run.sites = sites
        run.save()
        self.runs[int(message["run"])] = run
        say("info", f"run {message['run']} logs to MLflow run {run_id} ({name})")

    def on_round(self, message: dict[str, Any]) -> None:
        run = self.run(message)
        step, now = int(message["round"]), time.time()
        values = {**message["metrics"], "clients": message["clients"]}
        if message["seconds"]:
            values["round_duration_seconds"] = message["seconds"]
        outliers: dict[str, float] = message.get("outliers") or {}
        if outliers:
            values["outlier_score_max"] = max(outliers.values())
        self._log(run.client, run.run_id, values, step, now)
        for site, score in outliers.items():
            self._log(run.client, run.site_run(site), {"outlier_score": score}, step, now)

    def on_site(self, message: dict[str, Any]) -> None:
        run = self.run(message)
        site = run.site_run(str(message["site"]))
        self._log(run.client, site, message["metrics"], int(message["round"]), message["time"])

    def on_end(self, message: dict[str, Any]) -> None:
        run = self.run(message)
        if message["best"]:
            run.client.set_tag(run.run_id, "flstack.best", str(message["best"]))
        for model in message["models"]:
            if Path(model).is_file():
                run.client.log_artifact(run.run_id, model, "models")
        for site_run in run.sites.values():
            run.client.set_terminated(site_run, status=message["status"])
        run.client.set_terminated(run.run_id, status=message["status"])
        del self.runs[int(message["run"])]
        del self.starts[int(message["run"])]

    def on_close(self, message: dict[str, Any]) -> None:
        """Nothing to do: the runs stay RUNNING and a resumed run goes on logging."""

    def _log(
        self, client: Any, run_id: str, values: dict[str, float], step: int, when: float
    ) -> None:
        metric = self.mlflow.entities.Metric
        stamp = int(when * 1000)
        client.log_batch(
            run_id, metrics=[metric(str(k), float(v), stamp, step) for k, v in values.items()]
        )


def _recorded(record: Path, uri: str) -> dict[str, Any]:
    """What the run's folder says about its MLflow run (nothing when it logged elsewhere)."""
    try:
        data = json.loads(record.read_text()[:1_000_000])
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) and data.get("tracking_uri") == uri else {}


def main() -> int:
    """Log until stdin ends or says close."""
    # The file store is what works offline; MLflow keeps it but asks for this to allow it.
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    sys.stdout = sys.stderr
    try:
        import mlflow
        import mlflow.entities
        import mlflow.tracking
    except ImportError as exc:
        say(
            "fatal",
            f"mlflow cannot be imported on the server ({exc}): pip install 'flstack[mlflow]'",
        )
        return 3
    logger = Logger(mlflow)
    for line in sys.stdin:
        try:
            message = json.loads(line)
        except ValueError:
            continue
        logger.handle(message)
        if message.get("op") == "close":
            break
    return 0


if __name__ == "__main__":
    sys.exit(main())
