"""Prometheus metrics, one registry for the daemon (served at /metrics).

Worker processes keep their own registry and send :func:`snapshot` to the main process, which
adds their counters and histograms into what it serves (:data:`EXPOSED`).
"""
from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Hashable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics_core import Metric

REGISTRY = CollectorRegistry(auto_describe=True)
Sample = tuple[str, tuple[tuple[str, str], ...]]  # sample name, sorted labels

LIVE_LEGS = Gauge("emovoice_live_legs", "Call legs being scored now", registry=REGISTRY)
CALLS_TOTAL = Counter("emovoice_legs_started_total", "Call legs started", ["source"], registry=REGISTRY)
EVENTS_TOTAL = Counter("emovoice_events_total", "Events published", ["type"], registry=REGISTRY)
EVENTS_DROPPED = Counter("emovoice_events_dropped_total", "Events dropped for a slow subscriber", registry=REGISTRY)
AUDIOSOCKET_ERRORS = Counter(
    "emovoice_audiosocket_errors_total", "AudioSocket connections closed for bad input or rejected", ["reason"],
    registry=REGISTRY,
)
AUDIOSOCKET_CONNECTIONS = Gauge("emovoice_audiosocket_connections", "AudioSocket connections open now (the "
                                "audiosocket.max_connections cap counts these)", registry=REGISTRY)
RTP_PACKETS = Counter("emovoice_rtp_packets_total", "RTP packets accepted into a stream", registry=REGISTRY)
RTP_DROPPED = Counter(
    "emovoice_rtp_packets_dropped_total", "RTP datagrams dropped (malformed, unknown_source, payload_type, late, "
    "duplicate)", ["reason"], registry=REGISTRY,
)
RTP_LOST = Counter("emovoice_rtp_packets_lost_total", "RTP packets never received, concealed by silence",
                   registry=REGISTRY)
RTP_STREAM_TIMEOUTS = Counter("emovoice_rtp_stream_timeouts_total", "RTP streams ended because packets stopped",
                              registry=REGISTRY)
WINDOWS = Counter("emovoice_windows_total", "Windows by outcome (scored, silence, overload, error)", ["outcome"],
                  registry=REGISTRY)
CASCADE_SECOND = Counter("emovoice_cascade_second_windows_total", "Windows a cascade's second model scored (the "
                         "first model's P(NEGATIVE) reached the gate, or the window was in the sample)",
                         registry=REGISTRY)
BATCH_SIZE = Histogram("emovoice_batch_size", "Windows per model call", buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
                       registry=REGISTRY)
SCORING_LAG = Histogram("emovoice_scoring_lag_seconds", "From window due to result",
                        buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5), registry=REGISTRY)
WEBHOOK_DELIVERIES = Counter("emovoice_webhook_deliveries_total", "Webhook deliveries by outcome (sent, failed, "
                             "dropped)", ["outcome"], registry=REGISTRY)
AGENT_CONNECTIONS = Gauge("emovoice_agent_connections", "Agent notifier WebSocket connections", registry=REGISTRY)
SIP_CALLS = Counter("emovoice_sip_calls_total", "SIP INVITEs by outcome (answered, refused, no_codec)", ["outcome"],
                    registry=REGISTRY)
EVENTLOG_ERRORS = Counter("emovoice_eventlog_write_errors_total", "Failed writes to the JSONL log (disk full, I/O "
                          "error); the events wait in memory", registry=REGISTRY)
EVENTLOG_PENDING = Gauge("emovoice_eventlog_pending_events", "Events waiting in memory for the JSONL log to take them",
                         registry=REGISTRY)
EVENTLOG_LOST = Counter("emovoice_eventlog_lost_total", "Events lost: the JSONL log could not write them and the "
                        "memory backlog was full", registry=REGISTRY)
HEALTH_DEGRADED = Gauge("emovoice_health_degraded", "1 while /health reports degraded for this reason (eventlog, "
                        "model_errors, overload)", ["reason"], registry=REGISTRY)
CUE_TALK_OVERS = Counter("emovoice_cue_talk_overs_total", "Talk-overs (both legs voiced >= cues.talk_over_min_s)",
                         registry=REGISTRY)
CUE_TALK_OVER_SECONDS = Counter("emovoice_cue_talk_over_seconds_total", "Seconds both legs of a call were voiced",
                                registry=REGISTRY)
CUE_LONG_SILENCES = Counter("emovoice_cue_long_silences_total", "Silences of both legs >= cues.long_silence_s",
                            registry=REGISTRY)
CUE_LOUDNESS_DIFF = Histogram("emovoice_cue_agent_minus_customer_db", "Per call: agent minus customer voiced level",
                              buckets=(-20, -10, -6, -3, 0, 3, 6, 10, 20), registry=REGISTRY)
CUE_PACE = Histogram("emovoice_cue_voiced_segments_per_minute", "Per call and role: voiced segments per minute",
                     ["role"], buckets=(5, 10, 20, 30, 45, 60, 90), registry=REGISTRY)
JETSTREAM_PUBLISHED = Counter("emovoice_jetstream_published_total", "Events JetStream acknowledged (stored, or "
                              "duplicate: a re-send it already had)", ["outcome"], registry=REGISTRY)
JETSTREAM_FAILED = Counter("emovoice_jetstream_publish_failures_total",
                           "JetStream publishes that failed and are retried", registry=REGISTRY)
JETSTREAM_BUFFERED = Gauge("emovoice_jetstream_buffered", "Events waiting for a JetStream acknowledgement",
                           registry=REGISTRY)
JETSTREAM_DROPPED = Counter("emovoice_jetstream_dropped_total", "Events dropped from a full JetStream buffer, by kind "
                            "(score, lifecycle: call and escalation events)", ["kind"], registry=REGISTRY)
JETSTREAM_REDELIVERIES_SKIPPED = Counter("emovoice_jetstream_redeliveries_skipped_total", "Redelivered events a "
                                         "durable reader had already handled", registry=REGISTRY)


STREAM_FAMILIES = ("emovoice_events", "emovoice_events_dropped")  # counted where the event stream is: the main process


def snapshot() -> list[tuple[str, dict[str, str], float]]:
    """This process's counter and histogram samples (cumulative; ``_created`` and the event stream's left out)."""
    return [(s.name, s.labels, s.value) for family in REGISTRY.collect()
            if family.type in ("counter", "histogram") and family.name not in STREAM_FAMILIES
            for s in family.samples if not s.name.endswith("_created")]


class RemoteSamples:
    """Other processes' snapshots, added into this process's registry when it is collected."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self._live: dict[Hashable, Tally[Sample]] = {}
        self._retired: Tally[Sample] = Tally()  # processes that exited: their totals stay counted

    def update(self, source: Hashable, samples: list[tuple[str, dict[str, str], float]]) -> None:
        self._live[source] = Tally({(name, tuple(sorted(labels.items()))): value for name, labels, value in samples})

    def retire(self, source: Hashable) -> None:
        """``source`` exited: keep its last totals (a restarted process counts from zero again)."""
        self._retired.update(self._live.pop(source, Tally()))

    def totals(self) -> Tally[Sample]:
        out = Tally(self._retired)
        for samples in self._live.values():
            out.update(samples)
        return out

    def by_label(self, name: str, label: str) -> Tally[str]:
        """One counter's remote totals by the value of one label, as integers (e.g. windows by outcome)."""
        out: Tally[str] = Tally()
        for (sample, labels), value in self.totals().items():
            if sample == name:
                out[dict(labels).get(label, "")] += int(value)
        return out

    def collect(self) -> Iterator[Metric]:
        """The registry's families with the remote samples added (the registry interface of ``generate_latest``)."""
        remote = self.totals()
        for family in self.registry.collect():
            if family.type not in ("counter", "histogram"):
                yield family
                continue
            mine = {(s.name, tuple(sorted(s.labels.items()))) for s in family.samples}
            samples = [s._replace(value=s.value + remote.get((s.name, tuple(sorted(s.labels.items()))), 0.0))
                       for s in family.samples]
            names = {family.name + suffix for suffix in ("", "_total", "_bucket", "_count", "_sum")}
            extra = sorted(key for key in remote if key[0] in names and key not in mine)
            samples += [_sample(name, dict(labels), remote[(name, labels)]) for name, labels in extra]
            family.samples = samples
            yield family


def _sample(name: str, labels: dict[str, str], value: float):  # noqa: ANN202 (prometheus_client's Sample type)
    from prometheus_client.samples import Sample as PromSample

    return PromSample(name, labels, value)


EXPOSED = RemoteSamples(REGISTRY)  # what /metrics serves: this process plus the worker processes
