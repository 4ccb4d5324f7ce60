"""Pre-flight checks: what ``run`` would trip over at start, found without starting.

``emovoice-daemon check-config FILE`` reports every problem (one line each, naming the key: files,
worker processes);
``run`` stops on them with one ``cannot start:`` line before it loads the model. Ports are
checked first and alone by ``run`` (a second daemon is the common case), and by
``check-config --ports`` on request (the running daemon holds them otherwise).
"""
from __future__ import annotations

import os
from pathlib import Path

from emovoice_daemon.config import Config, ConfigError, resolve_workers
from emovoice_daemon.outputs.notifier import load_agent_tokens
from emovoice_daemon.scoring.models.loader import ModelError, validate_model
from emovoice_daemon.service.lifecycle import StartupError, check_ports_free


def port_problems(config: Config) -> list[str]:
    """The first listener port that cannot be bound, if any."""
    try:
        check_ports_free(config)
    except StartupError as exc:
        return [str(exc)]
    return []


def file_problems(config: Config) -> list[str]:
    """Every model, secret, TLS and output path the daemon would fail to use."""
    problems = _secret_problems(config) + _output_problems(config)
    try:
        validate_model(config.model)
    except ModelError as exc:
        problems.append(f"model.path: {exc}")
    if config.notifier.enabled:
        try:
            load_agent_tokens(config.notifier)
        except ConfigError as exc:
            problems += exc.errors
    return problems


def worker_problems(config: Config) -> list[str]:
    """More worker processes than CPU cores: each loads its own model, and the extra ones only add memory."""
    workers, cores = resolve_workers(config.service.workers), resolve_workers("auto")
    if config.audiosocket.enabled and workers > cores:
        return [f"service.workers: {workers} worker processes on {cores} CPU cores; at most {cores} (or auto)"]
    return []


def _secret_problems(config: Config) -> list[str]:
    files = [("api.token_file", config.api.token_file, config.api.enabled),
             ("api.tls_cert", config.api.tls_cert, config.api.enabled),
             ("api.tls_key", config.api.tls_key, config.api.enabled),
             ("webhook.secret_file", config.webhook.secret_file, bool(config.webhook.url)),
             ("ari.password_file", config.ari.password_file, config.ari.enabled),
             ("ami.secret_file", config.ami.secret_file, config.ami.enabled),
             ("sip.password_file", config.sip.password_file, config.sip.enabled),
             ("jetstream.credentials_file", config.jetstream.credentials_file, config.jetstream.enabled)]
    problems = [p for key, path, used in files if used and path for p in _readable(key, path)]
    if config.api.enabled and config.api.tls_key and not config.api.tls_cert:
        problems.append("api.tls_key: set without api.tls_cert")
    return problems


def _readable(key: str, path: str) -> list[str]:
    try:
        text = Path(path).expanduser().read_bytes()
    except OSError as exc:
        return [f"{key}: cannot read {path}: {exc.strerror}"]
    return [] if text.strip() else [f"{key}: {path} is empty"]


def _output_problems(config: Config) -> list[str]:
    outputs = [("events.log_path", config.events.log_path, True),
               ("history.path", config.history.path, config.history.enabled)]
    return [p for key, path, used in outputs if used for p in _writable_file(key, path)]


def _writable_file(key: str, path: str) -> list[str]:
    """A file the daemon creates or appends to: not a directory, in a directory it can write."""
    p = Path(path).expanduser()
    if p.is_dir():
        return [f"{key}: {path} is a directory (expected a file path)"]
    if p.exists():
        return [] if os.access(p, os.R_OK | os.W_OK) else [f"{key}: {path} is not writable by this user"]
    parent = p.parent
    if not parent.is_dir():
        return [f"{key}: directory {parent} does not exist"]
    return [] if os.access(parent, os.W_OK | os.X_OK) else [f"{key}: cannot create files in {parent}"]
