"""Process lifecycle: fail-fast start, systemd readiness and watchdog, SIGHUP reload, SIGTERM drain.

``run(daemon)`` is what ``emovoice-daemon run`` executes. SIGHUP re-reads the config file
and applies the ``escalation`` and ``notifier`` sections to new and live calls alike (other
sections need a restart, which is logged); an invalid file is reported and the running
settings are kept. SIGTERM/SIGINT stop accepting calls, score what is buffered, publish
``call.ended``, fsync the event log and close the sockets within ``service.drain_timeout_s``. SIGHUP also switches
to the learnt model version ``learning.models_dir/current`` names, when it changed (``Daemon.reload_model``).
"""
from __future__ import annotations

import asyncio
import dataclasses
import errno
import logging
import signal
import socket
import time

from emovoice_daemon.config import Config, ConfigError, load_config
from emovoice_daemon.judgement.policy import policy_factory, profile_for, with_model_defaults
from emovoice_daemon.outputs.eventlog import EventLogError
from emovoice_daemon.outputs.notifier import load_agent_tokens
from emovoice_daemon.scoring.models.loader import ModelError
from emovoice_daemon.service import interrupts
from emovoice_daemon.service.daemon import Daemon
from emovoice_daemon.service.sdnotify import Notifier

log = logging.getLogger(__name__)

RELOADABLE = ("escalation", "notifier")


class StartupError(Exception):
    """The daemon cannot start; the message says why and what to check."""


def listeners(config: Config) -> list[tuple[str, str, int, int]]:
    """(config key, host, port, socket type) of every enabled listener with a fixed port."""
    out = []
    if config.audiosocket.enabled:
        out.append(("audiosocket.port", config.audiosocket.host, config.audiosocket.port, socket.SOCK_STREAM))
        out += [(f"audiosocket.role_ports.{role}", config.audiosocket.host, port, socket.SOCK_STREAM)
                for role, port in config.audiosocket.role_ports.items()]
    if config.api.enabled:
        out.append(("api.port", config.api.host, config.api.port, socket.SOCK_STREAM))
    if config.ari.enabled:
        out.append(("rtp.port", config.rtp.host, config.rtp.port, socket.SOCK_DGRAM))
    if config.sip.enabled:
        out.append(("sip.port", config.sip.host, config.sip.port, socket.SOCK_DGRAM))
    return [listener for listener in out if listener[2]]


def check_ports_free(config: Config) -> None:
    """Fail before the (slow) model load when a listener's port is taken, e.g. by a second daemon."""
    for key, host, port, kind in listeners(config):
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, kind) as sock:
            if kind == socket.SOCK_STREAM:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as asyncio binds: TIME_WAIT is fine
            try:
                sock.bind((host, port))
            except OSError as exc:
                raise StartupError(f"{key}: cannot listen on {host}:{port}: {exc.strerror}"
                                   + (" (is another emovoice daemon running?)" if exc.errno == errno.EADDRINUSE
                                      else "")) from None


def status_line(daemon: Daemon) -> str:
    reasons = daemon.health_monitor.check()
    return (f"serving {len(daemon.calls.legs)} live legs, uptime {time.time() - daemon.started_at:.0f} s"
            + (f"; degraded: {'; '.join(reasons.values())}" if reasons else ""))


def reload_config(daemon: Daemon) -> bool:
    """Apply the config file's escalation and notifier sections; False (and nothing changed) if invalid."""
    try:
        new = load_config(daemon.config.source) if daemon.config.source != "<defaults>" else Config()
        tokens = load_agent_tokens(new.notifier) if daemon.notifier is not None else {}
    except ConfigError as exc:
        for line in exc.errors:
            log.error("reload: %s", line)
        log.error("reload: configuration invalid; keeping the running settings")
        return False
    cfg = daemon.config
    new.escalation = with_model_defaults(new.escalation, daemon.model_escalation)
    cfg.escalation = new.escalation
    daemon.calls.policy_factory = policy_factory(new.escalation)
    for leg in list(daemon.calls.legs.values()):
        leg.policy.cfg = profile_for(new.escalation, leg.meta)
    if daemon.notifier is not None:
        cfg.notifier = daemon.notifier.cfg = new.notifier
        daemon.notifier.tokens = tokens
    stale = [f.name for f in dataclasses.fields(Config)
             if f.name not in (*RELOADABLE, "source") and getattr(new, f.name) != getattr(cfg, f.name)]
    if stale:
        log.warning("reload: %s changed; restart the daemon to apply", ", ".join(stale))
    log.info("reload: escalation and notifier settings applied to %d live legs and new calls", len(daemon.calls.legs))
    return True


LEGS_SHARE = 0.7  # of the drain deadline for scoring what the legs received; the rest closes the outputs


async def drain(daemon: Daemon, timeout_s: float) -> bool:
    """``daemon.stop()`` within ``timeout_s``; past it, the event log is still fsynced and closed."""
    try:
        await asyncio.wait_for(daemon.stop(timeout_s * LEGS_SHARE), timeout_s)
        return True
    except asyncio.TimeoutError:
        log.error("drain took longer than service.drain_timeout_s=%.1f s; closing with %d legs unfinished",
                  timeout_s, len(daemon.calls.legs))
        daemon.event_log.close(clean=False)  # the next start recovers legs left without call.ended
        return False


def stop_on_signals() -> asyncio.Event:
    """An event set by SIGTERM or SIGINT, handled on the running loop (so a second Ctrl-C
    cannot interrupt a shutdown in progress)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if interrupts.pending():  # Ctrl-C during the imports whose KeyboardInterrupt a library swallowed
        stop.set()
    return stop


async def serve(daemon: Daemon) -> None:
    """Run the daemon until SIGTERM/SIGINT; raises StartupError when it cannot start."""
    notify = Notifier.from_env()
    check_ports_free(daemon.config)
    try:
        await daemon.start()
    except (EventLogError, ModelError) as exc:
        raise StartupError(str(exc)) from None
    except ConfigError as exc:
        raise StartupError("; ".join(exc.errors)) from None
    except OSError as exc:
        raise StartupError(f"{exc} (check the listener addresses and api.tls_cert/tls_key)") from None
    stop = stop_on_signals()
    asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, _reload, daemon, notify)
    notify.ready(status_line(daemon))
    daemon.health_monitor.on_change = lambda: notify.status(status_line(daemon))
    watchdog = asyncio.create_task(notify.watchdog(lambda: status_line(daemon)), name="sd-watchdog")
    await stop.wait()
    log.info("stopping: draining %d live legs", len(daemon.calls.legs))
    notify.stopping(f"draining {len(daemon.calls.legs)} live legs")
    watchdog.cancel()
    await drain(daemon, daemon.config.service.drain_timeout_s)
    notify.close()


def _reload(daemon: Daemon, notify: Notifier) -> None:
    notify.send(RELOADING="1", MONOTONIC_USEC=str(time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000))
    if reload_config(daemon) and daemon.workers is not None:
        daemon.workers.reload()
    daemon.switch_model_soon()  # to the learnt version `current` names, if it changed
    notify.ready(status_line(daemon))


async def run(daemon: Daemon) -> None:
    """Serve until SIGTERM/SIGINT; exits with one ``cannot start:`` line when it cannot start."""
    try:
        await serve(daemon)
    except StartupError as exc:
        raise SystemExit(f"emovoice-daemon: cannot start: {exc}") from None
