"""Typed configuration, loaded from YAML and validated with file:line error messages.

Each section is a dataclass; a field's ``metadata["check"]`` is a callable that returns an
error string (or None) for a value. Unknown keys, wrong types and failed checks are all
reported as ``file:line: section.key: what is wrong`` and loading fails as a whole.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

Check = Callable[[Any], "str | None"]


class ConfigError(Exception):
    """One or more invalid configuration values; ``errors`` holds one line per problem. ``config``, when the
    file parsed, is the config of its valid values (the invalid ones at their defaults), for further checks."""

    def __init__(self, errors: list[str], config: "Config | None" = None) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors
        self.config = config


def positive(value: Any) -> str | None:
    return None if value > 0 else "must be > 0"


def non_negative(value: Any) -> str | None:
    return None if value >= 0 else "must be >= 0"


def probability(value: Any) -> str | None:
    return None if 0.0 <= value <= 1.0 else "must be between 0 and 1"


def port(value: Any) -> str | None:
    return None if 0 <= value <= 65535 else "must be a port number 0-65535"


def worker_count(value: Any) -> str | None:
    return None if value == "auto" or (isinstance(value, int) and value >= 1) else "must be a number >= 1 or auto"


def one_of(*choices: str) -> Check:
    def check(value: Any) -> str | None:
        return None if value in choices else f"must be one of {', '.join(choices)}"
    return check


def each(check: Check) -> Check:
    """Apply ``check`` to every item of a list value."""
    def check_all(values: Any) -> str | None:
        return next((f"{v!r}: {p}" for v in values if (p := check(v))), None)
    return check_all


def networks(value: Any) -> str | None:
    for net in value:
        try:
            ipaddress.ip_network(net, strict=False)
        except ValueError:
            return f"{net!r} is not an IP network (e.g. 127.0.0.0/8)"
    return None


def _f(default: Any, check: Check | None = None, doc: str = "") -> Any:
    """A dataclass field with an optional check and a one-line description."""
    meta = {"check": check, "doc": doc}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


LOOPBACK = ["127.0.0.0/8", "::1/128"]


def state_dir() -> Path:
    """Where the daemon keeps what it learns: systemd's ``$STATE_DIRECTORY`` (``StateDirectory=``, the unit's
    /var/lib/emovoice), else ``$XDG_STATE_HOME/emovoice``, else ``~/.local/state/emovoice``; never the working directory."""
    if os.environ.get("STATE_DIRECTORY"):
        return Path(os.environ["STATE_DIRECTORY"].split(":")[0])
    return Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state") / "emovoice"


def role_ports(value: Any) -> str | None:
    """role -> listening port, for the AudioSocket taps that say their role by the port they dial."""
    bad = sorted(set(value) - {"mixed", "customer", "agent"})
    if bad:
        return f"unknown roles {bad} (known: mixed, customer, agent)"
    return next((f"{role}: {p}" for role, v in value.items() if (p := port(v))), None)


@dataclass
class AudioSocketConfig:
    enabled: bool = _f(True)
    host: str = _f("127.0.0.1", doc="listen address; loopback unless you mean it")
    port: int = _f(9093, port)
    allow: list[str] = _f(LOOPBACK, networks, "peer networks allowed to connect")
    payload_format: str = _f("slin", one_of("slin", "ulaw", "alaw"), "encoding of 0x10 frames")
    max_frame_bytes: int = _f(8192, positive, "longer frames close the connection")
    idle_timeout_s: float = _f(10.0, positive, "close a connection silent this long (a tap on a role_ports "
                               "port, once scoring, is never closed for silence: it ends with the call)")
    max_connections: int = _f(0, non_negative, "live connections at most; more are closed at once (the call goes on "
                              "untapped); 0 = the open-file limit less max(128, a quarter of it)")
    keepalive: bool = _f(True, doc="send silence back so AudioSocket() does not hang up after 2 s")
    role: str = _f("mixed", one_of("mixed", "customer", "agent"), "role of legs arriving on 'port'")
    role_ports: dict[str, int] = _f({}, role_ports, "extra listeners, role -> port (dialplan taps: customer, agent)")


@dataclass
class ApiConfig:
    enabled: bool = _f(True)
    host: str = _f("127.0.0.1")
    port: int = _f(8765, port)
    token: str = _f("", doc="bearer token; or token_file / EMOVOICE_API_TOKEN")
    token_file: str = _f("")
    metrics_public: bool = _f(False, doc="serve /metrics without a token")
    tls_cert: str = _f("")
    tls_key: str = _f("")


@dataclass
class ModelConfig:
    path: str = _f("", doc="model directory; empty = the shipped default")
    device: str = _f("auto", one_of("auto", "cpu", "cuda"))
    threads: int = _f(0, non_negative, "CPU threads for inference; 0 = one per 4 usable cores, at least 1")
    quantize_int8: bool | str = _f("model", lambda v: None if v in (True, False, "model") else "must be true, false or model",
                                   "int8 dynamic quantisation of linear layers (CPU): true, false, or model: as the model "
                                   "directory's config.json says (its quantize_int8, else off)")
    label_map: dict[str, str] = _f({}, doc="model label -> NEGATIVE/NEUTRAL/POSITIVE")
    adapt: bool = _f(True, doc="models with pooled features (the encoder, a compact student): centre them on the "
                                "site's mean (learnt from its calls)")
    adapt_site_variance: bool = _f(False, doc="also scale by the site's variance (off: a site of few voices has a "
                                   "narrow variance that inflates every difference between speakers)")
    adapt_leg_cap: float = _f(0.0, probability, "share of the site mean a leg's own mean may replace (0: none; a "
                              "caller angry for minutes would otherwise be judged against their own anger)")
    site_stats_path: str = field(default_factory=lambda: str(state_dir() / "site-stats.npz"), metadata={
        "check": None, "doc": "where the site statistics persist ('' = not kept); default: in the state directory"})


@dataclass
class PipelineConfig:
    window_s: float = _f(3.0, positive)
    hop_s: float = _f(1.0, positive)
    vad_min_voiced: float = _f(0.2, probability, "share of voiced 20 ms frames a window needs")
    vad_energy_dbfs: float = _f(-45.0, doc="frames quieter than this are unvoiced")
    speech_gate: bool = _f(True, doc="score only windows that hold human speech (silero-vad): music, tones, noise "
                           "are no evidence")
    speech_min_share: float = _f(0.2, probability, "share of a window's 32 ms chunks that must be speech")


@dataclass
class EngineConfig:
    max_batch: int = _f(32, positive)
    max_wait_ms: float = _f(20.0, non_negative)
    max_lag_s: float = _f(1.0, positive, "windows older than this are skipped (back-pressure)")
    streaming: bool = _f(True, doc="cache the CNN front-end per leg")
    stream_drift: float = _f(0.05, positive, "recompute cached front-end frames whose GroupNorm statistics "
                             "drifted more than this from the window's (lower: closer to a full pass, more work)")


def escalation_profiles(value: Any) -> str | None:
    """Each profile maps escalation keys (not 'profiles') to values that pass their checks."""
    fields = {f.name: f for f in dataclasses.fields(EscalationConfig) if f.name != "profiles" and not f.metadata.get("internal")}
    hints = typing.get_type_hints(EscalationConfig)
    for name, overrides in value.items():
        for key, v in overrides.items():
            if key not in fields:
                return f"profile {name!r}: unknown key {key!r} (known: {', '.join(fields)})"
            check = fields[key].metadata.get("check")
            problem = _type_error(v, hints[key]) or (check(v) if check else None)
            if problem:
                return f"profile {name!r}: {key}: {problem}"
    return None


@dataclass
class EscalationConfig:
    method: str = _f("ema", one_of("ema", "median"), "smoothing of the NEGATIVE probability")
    smoothing: float = _f(0.5, probability, "EMA weight of the newest NEGATIVE probability")
    median_windows: int = _f(5, positive, "windows in the running median (method: median)")
    enter: float = _f(0.6, probability, "smoothed NEGATIVE that starts an escalation")
    exit: float = _f(0.4, probability, "smoothed NEGATIVE below which it clears")
    alert: float = _f(0.75, probability, "smoothed NEGATIVE that makes it an alert, not a watch")
    min_duration_s: float = _f(2.0, non_negative, "seconds above 'enter' before raising")
    clear_duration_s: float = _f(3.0, non_negative, "seconds below 'exit' before clearing")
    cooldown_s: float = _f(30.0, non_negative, "no new escalation this long after a clear")
    trend_window_s: float = _f(30.0, positive, "look-back of the rising-trend rule")
    trend_rise: float = _f(0.0, probability, "rise within trend_window_s that raises a watch; 0 = off (it fired on "
                           "70-100 % of calm calls: docs/training.md)")
    profiles: dict[str, dict] = _f({}, escalation_profiles, "per queue/tenant overrides, by meta queue or tenant")
    given: frozenset[str] = field(default=frozenset(), compare=False, metadata={"internal": True})  # keys the file set


def escalation_defaults_problem(value: dict) -> str | None:
    """A model's escalation defaults (``escalation.json``): known keys with values that pass their checks."""
    return escalation_profiles({"model": value})


def severity_keys(value: Any) -> str | None:
    unknown = sorted(set(value) - {"watch", "alert"})
    return f"unknown severities {unknown} (known: watch, alert)" if unknown else None


def http_url(value: Any) -> str | None:
    return None if value == "" or value.startswith(("http://", "https://")) else "must be an http:// or https:// URL"


DEFAULT_PHRASES = {
    "watch": "Caller sounds frustrated - acknowledge the problem and summarise what you will do.",
    "alert": "Frustration rising - acknowledge and offer a concrete next step.",
}


@dataclass
class NotifierConfig:
    enabled: bool = _f(True, doc="agent prompts: /agent page and /agent/ws WebSocket on the API listener")
    agents: dict[str, str] = _f({}, doc="agent id/extension -> token; prefer agents_file")
    agents_file: str = _f("", doc="YAML mapping agent id -> token, kept out of the config")
    phrases: dict[str, str] = _f(DEFAULT_PHRASES, severity_keys, "suggested phrasing per severity (watch, alert)")
    roles: list[str] = _f(["customer", "mixed"], doc="legs whose escalations prompt the agent")


@dataclass
class WebhookConfig:
    url: str = _f("", http_url, "POST escalation events here; empty = off")
    secret: str = _f("", doc="HMAC-SHA256 key for X-EmoVoice-Signature; or secret_file / EMOVOICE_WEBHOOK_SECRET")
    secret_file: str = _f("")
    events: list[str] = _f(["escalation.raised", "escalation.cleared"], doc="event types to send")
    timeout_s: float = _f(5.0, positive)
    retries: int = _f(3, non_negative, "retries after the first attempt")
    backoff_s: float = _f(0.5, positive, "first retry delay, doubled each retry")
    queue: int = _f(1000, positive, "events waiting to be sent before the oldest is dropped")


@dataclass
class HistoryConfig:
    enabled: bool = _f(True, doc="SQLite call history (scores and summaries, never audio), served at /calls")
    path: str = _f("emovoice-history.sqlite3")
    retention_days: float = _f(90.0, non_negative, "delete calls older than this at start; 0 = keep")


def nats_url(value: Any) -> str | None:
    return None if value.startswith(("nats://", "tls://")) else "must be a nats:// or tls:// URL"


def subject_token(value: Any) -> str | None:
    return None if re.fullmatch(r"[A-Za-z0-9_-]*", value) else "letters, digits, '_' and '-' only (a subject token)"


@dataclass
class JetStreamConfig:
    enabled: bool = _f(False, doc="publish every event to NATS JetStream (subjects emovoice.<site>.<call>.<type>)")
    servers: list[str] = _f(["nats://127.0.0.1:4222"], each(nats_url), "NATS servers (any node of a cluster)")
    site: str = _f("", subject_token, "this call server's name in subjects; empty = the host name")
    stream: str = _f("EMOVOICE", subject_token, "stream name; created (subjects emovoice.>) if absent")
    credentials_file: str = _f("", doc="NATS .creds file (user JWT + nkey seed); empty = no auth")
    replicas: int = _f(1, positive, "replicas of a stream this daemon creates (3 on a 3-node cluster)")
    max_age_days: float = _f(1.0, non_negative, "a created stream keeps events this long; 0 = forever")
    duplicate_window_s: float = _f(120.0, positive, "JetStream drops a re-sent event id within this window")
    buffer: int = _f(100_000, positive, "events held while NATS is unreachable before the oldest is dropped")


@dataclass
class EventsConfig:
    log_path: str = _f("events.jsonl", doc="append-only JSONL event log")
    rotate_bytes: int = _f(100_000_000, positive, "rotate the log when it would grow past this")
    rotate_keep: int = _f(5, non_negative, "rotated files kept (<log>.1 .. <log>.N); 0 = delete on rotation")
    fsync_interval_s: float = _f(1.0, non_negative, "fsync the log at most this often (and always at shutdown)")
    subscriber_queue: int = _f(1000, positive, "events buffered per WebSocket client")


@dataclass
class ServiceConfig:
    drain_timeout_s: float = _f(10.0, positive, "SIGTERM: longest wait for live calls to be scored and logged")
    health_window_s: float = _f(10.0, positive, "/health: period over which model errors and overload are judged")
    health_max_overload: float = _f(0.05, probability, "/health: degraded above this share of windows skipped")
    workers: int | str = _f(1, worker_count, "processes scoring AudioSocket calls: 1 = the main process; N or auto "
                            "(one per CPU core) = worker processes, one event stream and API in the main process")


def resolve_workers(value: int | str) -> int:
    """``service.workers`` as a number of processes (``auto``: the CPU cores this process may use)."""
    return len(os.sched_getaffinity(0)) if value == "auto" else int(value)


@dataclass
class DebugConfig:
    record_audio: bool = _f(False, doc="write call audio to record_dir (off: no audio on disk)")
    record_dir: str = _f("recordings")


@dataclass
class RtpConfig:
    host: str = _f("127.0.0.1", doc="UDP address ExternalMedia RTP is received on (used when ari is enabled)")
    port: int = _f(40000, port)
    advertise: str = _f("", doc="host:port Asterisk sends RTP to; empty = host:port")
    jitter_depth: int = _f(3, non_negative, "packets a late packet may be waited for (20 ms each)")
    stream_timeout_s: float = _f(5.0, positive, "end a stream whose packets stop this long")
    receive_buffer_bytes: int = _f(4 * 1024 * 1024, non_negative,
                                   "kernel receive buffer of the RTP socket (0 = system default; capped by "
                                   "net.core.rmem_max without CAP_NET_ADMIN)")


@dataclass
class AriConfig:
    enabled: bool = _f(False)
    url: str = _f("http://127.0.0.1:8088/ari", doc="ARI base URL (http.conf + ari.conf)")
    username: str = _f("emovoice")
    password: str = _f("", doc="or password_file / EMOVOICE_ARI_PASSWORD")
    password_file: str = _f("")
    app: str = _f("emovoice", doc="Stasis application name used in the dialplan")
    format: str = _f("ulaw", one_of("ulaw", "alaw", "slin16"),
                     "ExternalMedia RTP format (slin16 costs the daemon 4x the CPU per packet: bench/bench_ari_rtp.py)")
    directions: list[str] = _f(["in", "out"], each(one_of("in", "out")),
                               "snoop directions: in = customer voice, out = what the customer hears")
    channel_role: str = _f("customer", one_of("customer", "agent"), "whose channel enters Stasis")
    id_prefix: str = _f("emovoice-", doc="prefix of the snoop/ExternalMedia/bridge ids we create (orphan clean-up)")
    reconnect_max_s: float = _f(30.0, positive, "longest back-off between WebSocket reconnects")


@dataclass
class AmiConfig:
    enabled: bool = _f(False, doc="AMI client: EMOVOICE_ESCALATION via Setvar, calls bound to the queue member "
                       "who answers, supervisor listen-in (asterisk/manager.conf)")
    host: str = _f("127.0.0.1")
    port: int = _f(5038, port)
    username: str = _f("emovoice")
    secret: str = _f("", doc="or secret_file / EMOVOICE_AMI_SECRET")
    secret_file: str = _f("")
    reconnect_max_s: float = _f(30.0, positive, "longest back-off between reconnects")
    setvar_interval_s: float = _f(2.0, non_negative, "escalation variables reach a call's channel at most once "
                                  "this often (the latest values win)")
    supervisors: dict[str, str] = _f({}, doc="supervisor name -> the dial string of their phone (PJSIP/2001) "
                                     "that listen-in rings")


@dataclass
class SipConfig:
    enabled: bool = _f(False)
    host: str = _f("127.0.0.1", doc="SIP/RTP bind address; loopback unless you mean it")
    rtp_port_low: int = _f(10000, port)  # before `port`, which shadows the check in this class body
    rtp_port_high: int = _f(10100, port)
    port: int = _f(5070, port)
    server: str = _f("", doc="PBX host[:port]: registrar, and where SIP answers are sent")
    register: bool = _f(True, doc="REGISTER with server; false = only accept INVITEs (from 'allow')")
    username: str = _f("emovoice", doc="extension to register as")
    password: str = _f("", doc="or password_file / EMOVOICE_SIP_PASSWORD")
    password_file: str = _f("")
    allow: list[str] = _f(LOOPBACK, networks, "PBX networks INVITEs are accepted from")
    role: str = _f("customer", one_of("mixed", "customer", "agent"), "role of the received audio")


@dataclass
class CuesConfig:
    enabled: bool = _f(True, doc="behavioural cues on calls with separate customer and agent legs")
    talk_over_min_s: float = _f(1.0, positive, "both legs voiced this long is one talk-over")
    long_silence_s: float = _f(5.0, positive, "both legs silent this long is one long silence")
    escalate_talk_over_negative: float = _f(0.6, probability, "raise a cue when the agent talks over a customer "
                                           "whose smoothed NEGATIVE is at least this (1 = never)")
    talk_over_cooldown_s: float = _f(30.0, non_negative, "after a talk-over cue clears, the next is raised no "
                                     "sooner than this (call seconds)")


@dataclass
class LearningConfig:
    feedback: bool = _f(True, doc="accept verdicts on escalations and calls (agent page, wallboard, emovoice-top, "
                        "API): each is a 'feedback' event, kept in the call history")
    keep_features: bool = _f(True, doc="keep the model features (not audio) of the windows each verdict concerns, "
                             "for 'emovoice-daemon learn'; off: verdicts are still events, nothing is kept")
    store_path: str = field(default_factory=lambda: str(state_dir() / "learning" / "verdicts.sqlite3"), metadata={
        "check": None, "doc": "the feature store (SQLite, 0600); default: in the state directory"})
    retention_days: float = _f(180.0, non_negative, "delete kept features older than this (at start and daily); 0 = keep")
    recent_s: float = _f(300.0, positive, "per leg, the features of its windows of the last recent_s are held in "
                         "memory (encoder model: 8 KiB a window, 2.4 MB a leg at 300 s and 1 s hops)")
    grace_s: float = _f(600.0, positive, "an ended call still takes verdicts (and its features stay in memory) this long")
    lead_s: float = _f(10.0, non_negative, "an escalation's windows start this long before it was raised")
    upset_last_s: float = _f(30.0, positive, "'caller is upset' with nothing raised: the windows of the last "
                             "upset_last_s of the leg are upset")
    models_dir: str = field(default_factory=lambda: str(state_dir() / "models"), metadata={
        "check": None, "doc": "learnt models v0001, v0002, ... and the 'current' pointer the daemon loads"})


@dataclass
class Config:
    audiosocket: AudioSocketConfig = field(default_factory=AudioSocketConfig)
    api: ApiConfig = field(default_factory=ApiConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    escalation: EscalationConfig = field(default_factory=EscalationConfig)
    events: EventsConfig = field(default_factory=EventsConfig)
    notifier: NotifierConfig = field(default_factory=NotifierConfig)
    webhook: WebhookConfig = field(default_factory=WebhookConfig)
    history: HistoryConfig = field(default_factory=HistoryConfig)
    service: ServiceConfig = field(default_factory=ServiceConfig)
    debug: DebugConfig = field(default_factory=DebugConfig)
    rtp: RtpConfig = field(default_factory=RtpConfig)
    ari: AriConfig = field(default_factory=AriConfig)
    sip: SipConfig = field(default_factory=SipConfig)
    ami: AmiConfig = field(default_factory=AmiConfig)
    cues: CuesConfig = field(default_factory=CuesConfig)
    jetstream: JetStreamConfig = field(default_factory=JetStreamConfig)
    learning: LearningConfig = field(default_factory=LearningConfig)
    source: str = field(default="<defaults>", metadata={"internal": True})
    lines: dict[str, int] = field(default_factory=dict, compare=False, metadata={"internal": True})  # "section.key" -> line

    def where(self, key: str) -> str:
        """``file:line`` of ``key`` (``section.key``) when the file sets it, else the file."""
        line = self.lines.get(key)
        return f"{self.source}:{line}" if line else self.source


def _type_error(value: Any, hint: Any) -> str | None:
    origin = typing.get_origin(hint) or hint
    if origin is types.UnionType:
        args = typing.get_args(hint)
        if any(_type_error(value, arg) is None for arg in args):
            return None
        return f"expected {' or '.join(a.__name__ for a in args)}, got {type(value).__name__} {value!r}"
    if origin is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif origin is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif origin is list:
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
    elif origin is dict:
        item = (typing.get_args(hint) or (str, str))[1]
        ok = isinstance(value, dict) and all(isinstance(v, typing.get_origin(item) or item) for v in value.values())
    else:
        ok = isinstance(value, origin)
    return None if ok else f"expected {getattr(origin, '__name__', origin)}, got {type(value).__name__} {value!r}"


def _build_section(cls: type, node: yaml.Node, where: str, name: str, errors: list[str], lines: dict[str, int]) -> Any:
    if not isinstance(node, yaml.MappingNode):
        errors.append(f"{where}:{node.start_mark.line + 1}: {name}: expected a mapping")
        return cls()
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    values: dict[str, Any] = {}
    for key_node, value_node in node.value:
        key, line = key_node.value, key_node.start_mark.line + 1
        lines[f"{name}.{key}"] = line
        if key not in fields:
            errors.append(f"{where}:{line}: {name}.{key}: unknown key (known: {', '.join(fields)})")
            continue
        value = yaml.safe_load(yaml.serialize(value_node))
        problem = _type_error(value, hints[key])
        if problem is None and fields[key].metadata.get("check"):
            problem = fields[key].metadata["check"](value)
        if problem:
            errors.append(f"{where}:{line}: {name}.{key}: {problem}")
        else:
            values[key] = float(value) if hints[key] is float else value
    if "given" in {f.name for f in dataclasses.fields(cls)}:
        values["given"] = frozenset(values)
    return cls(**values)


def _duplicate_keys(node: yaml.Node, where: str, prefix: str) -> list[str]:
    """A key given twice in one mapping, at any depth (YAML would silently keep the last one)."""
    errors: list[str] = []
    if isinstance(node, yaml.SequenceNode):
        for item in node.value:
            errors += _duplicate_keys(item, where, prefix)
    elif isinstance(node, yaml.MappingNode):
        first: dict[str, int] = {}
        for key_node, value_node in node.value:
            key, line = f"{prefix}{key_node.value}", key_node.start_mark.line + 1
            if key in first:
                errors.append(f"{where}:{line}: {key}: duplicate key (first given on line {first[key]})")
            first.setdefault(key, line)
            errors += _duplicate_keys(value_node, where, f"{key}.")
    return errors


def parse_config(text: str, where: str = "<string>") -> Config:
    """Parse and validate YAML text; raises ConfigError listing every problem."""
    try:
        root = yaml.compose(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark else 0
        raise ConfigError([f"{where}:{line}: not valid YAML: {getattr(exc, 'problem', exc)}"]) from None
    errors: list[str] = _duplicate_keys(root, where, "") if root is not None else []
    sections: dict[str, Any] = {}
    lines: dict[str, int] = {}
    if root is not None:
        if not isinstance(root, yaml.MappingNode):
            raise ConfigError([f"{where}:{root.start_mark.line + 1}: top level must be a mapping"])
        known = {f.name: f.type for f in dataclasses.fields(Config) if not f.metadata.get("internal")}
        hints = typing.get_type_hints(Config)
        for key_node, value_node in root.value:
            key = key_node.value
            if key not in known:
                errors.append(f"{where}:{key_node.start_mark.line + 1}: {key}: unknown section (known: {', '.join(known)})")
                continue
            sections[key] = _build_section(hints[key], value_node, where, key, errors, lines)
    errors.extend(_cross_checks(sections, where))
    config = Config(**sections, source=where, lines=lines)
    if errors:
        raise ConfigError(errors, config)
    return config


def _cross_checks(sections: dict[str, Any], where: str) -> list[str]:
    errors = []
    pipe = sections.get("pipeline", PipelineConfig())
    if pipe.hop_s > pipe.window_s:
        errors.append(f"{where}: pipeline.hop_s: must not exceed pipeline.window_s ({pipe.window_s})")
    errors += _port_clashes(sections, where)
    esc = sections.get("escalation", EscalationConfig())
    if esc.exit > esc.enter:
        errors.append(f"{where}: escalation.exit: must be <= escalation.enter ({esc.enter}) for hysteresis")
    if esc.alert < esc.enter:
        errors.append(f"{where}: escalation.alert: must be >= escalation.enter ({esc.enter})")
    return errors


def _port_clashes(sections: dict[str, Any], where: str) -> list[str]:
    """Two enabled listeners of one protocol on one fixed port: the second could never bind."""
    audio, api = sections.get("audiosocket", AudioSocketConfig()), sections.get("api", ApiConfig())
    ari, rtp, sip = sections.get("ari", AriConfig()), sections.get("rtp", RtpConfig()), sections.get("sip", SipConfig())
    tcp = [("audiosocket.port", audio.port, audio.enabled), ("api.port", api.port, api.enabled),
           *((f"audiosocket.role_ports.{role}", p, audio.enabled) for role, p in audio.role_ports.items())]
    udp = [("rtp.port", rtp.port, ari.enabled), ("sip.port", sip.port, sip.enabled)]
    errors = []
    for listeners in (tcp, udp):
        first: dict[int, str] = {}
        for key, number, enabled in listeners:
            if not enabled or not number:
                continue
            if number in first:
                errors.append(f"{where}: {key}: port {number} is already {first[number]}")
            first.setdefault(number, key)
    return errors


def load_config(path: str | os.PathLike[str] | None) -> Config:
    """Load a config file (None: all defaults)."""
    if path is None:
        return Config()
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{p}:0: cannot read: {exc.strerror}"]) from None
    return parse_config(text, str(p))


def read_secret(value: str, file: str, env: str) -> str:
    """A secret from the environment variable ``env``, else ``file``, else the literal value."""
    if os.environ.get(env):
        return os.environ[env].strip()
    if file:
        return Path(file).read_text(encoding="utf-8").strip()
    return value
