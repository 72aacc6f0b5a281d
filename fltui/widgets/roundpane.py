"""The round pane: where the run stands, who it waits for, and how the model is doing.

Everything comes from the feed's run state; only the wait-after-min
countdown moves with the clock, on the dashboard's one-second tick. Texts
of any length (why the run paused, stopped or cannot progress, the failed
sites' errors) take at most ``TEXT_LINES`` lines, the last cut with an
ellipsis: at 120x36 a long failure pushed the heartbeats pane below it down
to its border (the full errors are in the sites' rows and the logs).
"""

from __future__ import annotations

import re

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import ProgressBar, Sparkline

from flcore import status as st
from flcore.feed import RunInfo
from fltui.widgets.line import Line
from fltui.widgets.tones import tone_style

DEFAULT_METRIC = "val_accuracy"
MAX_NAMES = 6
BEST_ROUND = re.compile(r"\(round (\d+)\)")
SEPARATOR = " · "
TEXT_LINES = 3


def chart_metric(run: RunInfo) -> str:
    """The metric to chart: the one ``best_metric`` names, else val_accuracy, else the first."""
    named = run.best_metric.split("=", 1)[0].strip()
    if named:
        return named
    names = [name for record in run.history for name in record.metrics]
    return DEFAULT_METRIC if DEFAULT_METRIC in names or not names else names[0]


def metric_series(run: RunInfo, metric: str) -> list[float]:
    """The metric of each round that reported it, in round order."""
    return [
        r.metrics[metric] for r in sorted(run.history, key=lambda r: r.round) if metric in r.metrics
    ]


def best_label(run: RunInfo) -> str:
    """The best metric, naming only rounds the run has.

    The metrics of round *r* describe the model the sites received at its
    start; the final validation reports as round ``num_rounds``, which the
    run does not have as a training round: that best is the final model's.
    """
    value = run.best_metric.split("=", 1)[-1].strip()
    found = BEST_ROUND.search(value)
    if found and run.num_rounds and int(found.group(1)) >= run.num_rounds:
        value = f"{value[: found.start()]}(final model){value[found.end() :]}"
    return value


def ending_of(run: RunInfo) -> str:
    """Why a run that does not train stopped, or why it never started ("" when unknown)."""
    if not run.reason:
        return ""
    if run.reason == st.FINISHED:
        return "Finished all rounds"
    if run.server_status == st.NOT_STARTED:
        return f"Not started: {run.reason}"
    return f"Stopped: {run.end_reason()}"


def failed_text(run: RunInfo) -> str:
    """``Failed: flclient3 (no DATA_ROOT set)``: each failed site with its error."""
    return f"Failed: {run.failed_sites_text()}"


def names(instances: tuple[str, ...]) -> str:
    """A short list of instance names."""
    shown = ", ".join(instances[:MAX_NAMES])
    more = len(instances) - MAX_NAMES
    return f"{shown} and {more} more" if more > 0 else shown


class RoundPane(Vertical, can_focus=True):
    """Round progress bar, updates against min/max, awaited clients, countdown, metric chart."""

    def compose(self) -> ComposeResult:
        """The parts of the pane, top to bottom."""
        yield Line(id="round-title")
        yield ProgressBar(total=1, show_eta=False, id="round-bar")
        yield Line(id="round-updates")
        yield Line(id="round-countdown")
        yield Line(id="round-metric")
        yield Sparkline([], id="round-chart")

    _run: RunInfo | None = None

    def on_resize(self) -> None:
        """The texts are cut to the lines of the new width."""
        if self._run is not None:
            self.query_one("#round-updates", Line).set(self._updates(self._run))

    def show(self, run: RunInfo, now: float) -> None:
        """Redraw from the run state."""
        self._run = run
        muted = tone_style(self.app, "muted")
        title = Text(no_wrap=True, overflow="ellipsis")
        bar = self.query_one("#round-bar", ProgressBar)
        in_rounds = run.current_round >= 0 and run.num_rounds > 0
        if not run.run_number:
            title.append("No run selected (n sets one)", style=muted)
        elif not in_rounds:
            title.append(f"Run {run.run_number}", style="bold")
            title.append(f"{SEPARATOR}{run.app or 'no app deployed'}", style=muted)
        else:
            shown_round = min(run.current_round, run.num_rounds)
            title.append(f"Round {shown_round} / {run.num_rounds}", style="bold")
            phase = "" if run.phase == "training" else run.phase
            detail = SEPARATOR.join(part for part in (run.app, phase) if part)
            if detail:
                title.append(f"{SEPARATOR}{detail}", style=muted)
        self.query_one("#round-title", Line).set(title)
        bar.display = in_rounds
        if in_rounds:
            bar.update(
                total=max(run.num_rounds - run.start_round, 1),
                progress=max(min(run.current_round, run.num_rounds) - run.start_round, 0),
            )
        self.query_one("#round-updates", Line).set(self._updates(run))
        self.show_countdown(run, now)
        metric = chart_metric(run)
        series = metric_series(run, metric)
        label = Text(no_wrap=True, overflow="ellipsis")
        if series:
            label.append(f"{metric} ", style=muted)
            label.append(f"{series[-1]:.4f}", style="bold")
        if run.best_metric:
            label.append(f"\nbest {best_label(run)}", style=muted)
        self.query_one("#round-metric", Line).set(label)
        chart = self.query_one("#round-chart", Sparkline)
        chart.data = series
        chart.display = len(series) > 1

    def _updates(self, run: RunInfo) -> Text:
        text = Text()
        if run.fault:
            text.append(self._clipped(f"Paused: {run.fault}", "error"))
            text.append("\n")
        if run.server_status not in st.ACTIVE and run.run_number:
            ending = ending_of(run)
            if ending:
                tone = "success" if run.reason == st.FINISHED else "warning"
                text.append(ending, style=tone_style(self.app, tone))
            if run.failed_sites:
                text.append("\n" if ending else "")
                text.append(self._clipped(failed_text(run), "error"))
            return text
        # While it trains, the failed sites' errors are in their rows (enter): names only.
        failed = f"Failed: {names(run.failed_sites)}"
        if run.current_round < 0 or run.current_round >= run.num_rounds:
            if run.failed_sites:
                text.append(failed, style=tone_style(self.app, "error"))
            return text
        text.append(f"Updates {run.updates_received}", style="bold")
        text.append(f"{SEPARATOR}min {run.min_num_clients} · max {run.max_num_clients}\n")
        if run.awaited:
            text.append("Waiting for ", style=tone_style(self.app, "muted"))
            text.append(names(run.awaited))
        else:
            text.append("Waiting for nobody", style=tone_style(self.app, "muted"))
        if run.failed_sites:
            text.append(f"\n{failed}", style=tone_style(self.app, "error"))
        if run.blocked:
            text.append("\n")
            text.append(self._clipped(f"Cannot progress: {run.blocked}", "warning"))
        return text

    def _clipped(self, words: str, tone: str) -> Text:
        """``words`` in ``tone``, at most ``TEXT_LINES`` lines as wide as the pane draws them."""
        text = Text(words, style=tone_style(self.app, tone))
        width = self.query_one("#round-updates", Line).content_size.width
        if width <= 1:
            return text
        lines = text.wrap(self.app.console, width)
        if len(lines) <= TEXT_LINES:
            return text
        kept = list(lines)[:TEXT_LINES]
        kept[-1].rstrip()
        kept[-1].truncate(width - 1)
        kept[-1].append("…")
        return Text("\n").join(kept)

    def show_countdown(self, run: RunInfo, now: float) -> None:
        """The wait-after-min countdown: seconds until the round is aggregated anyway."""
        left = run.wait_deadline - now
        text = Text()
        if run.wait_deadline and left > 0:
            text.append(f"Aggregating in {left:.0f}s", style=tone_style(self.app, "warning"))
            text.append(" (wait after min)", style=tone_style(self.app, "muted"))
        self.query_one("#round-countdown", Line).set(text)
