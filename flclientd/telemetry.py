"""The client daemon's Prometheus metrics (docs/operations.md, "Metrics", lists them).

Imported only when the site turned the endpoint on. Everything is read
when Prometheus scrapes, in the endpoint's thread, from what the agent, its
uplink and its connection keep anyway: the status it reports to the server,
the last round it trained, the bytes it moved, its logins and retries, and
the memory of its training processes.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from flclientd.agent import Agent
from flcore import status as st
from flcore.exporter import status_family
from flcore.proctable import descendants, resident_bytes
from flcore.version import flstack_version

STATUSES = (
    st.NOT_STARTED,
    st.STARTING,
    st.WAITING_APPROVAL,
    st.STARTED,
    st.PAUSED,
    st.CROSS_VALIDATING,
    st.STOPPING,
    st.STOPPED,
    st.FAILED,
)


class ClientTelemetry:
    """A collector over one agent."""

    def __init__(self, agent: Agent) -> None:
        self._agent = agent

    def collect(self) -> Iterator[Metric]:
        """The metrics, as they are now."""
        agent = self._agent
        info = GaugeMetricFamily(
            "flstack_client_info",
            "This client: its kit, project and flstack version",
            labels=["site", "project", "version"],
        )
        info.add_metric([agent.startup.name, agent.startup.project, flstack_version()], 1)
        yield info
        yield from self._training()
        yield from self._link()
        yield from self._rounds()
        yield from self._processes()

    def _training(self) -> Iterator[Metric]:
        status = self._agent.status
        yield status_family(
            "flstack_client_training_status", "The client's", STATUSES, status.status
        )
        yield GaugeMetricFamily(
            "flstack_client_run_number", "The run the client trains (0: none)", status.run_number
        )
        yield GaugeMetricFamily(
            "flstack_client_round", "The round the client works on (-1: none)", status.round
        )

    def _link(self) -> Iterator[Metric]:
        uplink, traffic = self._agent.uplink, self._agent.conn.traffic
        yield GaugeMetricFamily(
            "flstack_client_connected",
            "Whether the control stream to the server is open",
            1.0 if uplink.connected.is_set() else 0.0,
        )
        yield CounterMetricFamily(
            "flstack_client_logins", "Logins: the first, then one per reconnect", uplink.logins
        )
        yield CounterMetricFamily(
            "flstack_client_retries",
            "Downloads, uploads and reports tried again after a broken connection, a stalled "
            "transfer or a server error",
            uplink.retries,
        )
        yield CounterMetricFamily(
            "flstack_client_transfers_stalled",
            "Downloads and uploads given up because nothing moved for a while (then tried again)",
            uplink.stalls,
        )
        for name, text, counts in (
            ("flstack_client_received_bytes", "Model and app bytes received", traffic.received),
            ("flstack_client_sent_bytes", "Model bytes sent to the server", traffic.sent),
            ("flstack_client_uploads", "Uploads by the server's verdict", traffic.verdicts),
        ):
            label = "outcome" if counts is traffic.verdicts else "kind"
            family = CounterMetricFamily(name, text, labels=[label])
            for key, value in dict(counts).items():
                family.add_metric([key], value)
            yield family

    def _rounds(self) -> Iterator[Metric]:
        done = self._agent.last_round
        if done is None:
            return
        yield GaugeMetricFamily(
            "flstack_client_last_round", "The last round this site trained", done.round
        )
        yield GaugeMetricFamily(
            "flstack_client_last_round_duration_seconds",
            "How long the last round took here: download, validation, training and upload",
            done.seconds,
        )
        yield GaugeMetricFamily(
            "flstack_client_last_round_timestamp_seconds",
            "When the server's verdict on the last round's update arrived",
            done.finished_at,
        )

    def _processes(self) -> Iterator[Metric]:
        worker = self._agent.worker
        leader = worker.pgid if worker is not None else None
        pids = [leader, *descendants(leader)] if leader else []
        yield GaugeMetricFamily(
            "flstack_client_training_processes",
            "Processes of the training child (ranks and data loader workers included)",
            len(pids),
        )
        yield GaugeMetricFamily(
            "flstack_client_training_resident_memory_bytes",
            "Resident memory of the training processes together",
            resident_bytes(pids),
        )
