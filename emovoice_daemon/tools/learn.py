"""``emovoice-daemon learn``: refit the model on the site's verdicts into a new version, roll back, forget a call.

A new version is written to ``learning.models_dir/vNNNN`` and made ``current`` only when the refit says its
validation on held-out verdict calls improved; then the running daemon is asked to switch (``POST /model/reload``
with the API token; without an answer it switches at its next SIGHUP or start).
"""
from __future__ import annotations

import json
import shutil
import ssl
import urllib.error
import urllib.request
from pathlib import Path

from emovoice_daemon.config import Config, read_secret
from emovoice_daemon.learning.store import FeatureStore
from emovoice_daemon.learning.versions import ModelVersions
from emovoice_daemon.scoring.models.loader import DEFAULT_DIR


def learn(config: Config) -> int:
    """Refit on every kept verdict; 0 when a new version is current or the current one stays, 1 when there is
    nothing (or too little) to learn from."""
    from emovoice_daemon.learning.refit import SiteVerdicts, refit

    cfg = config.learning
    store = FeatureStore(cfg.store_path, cfg.retention_days)
    try:
        kept = store.load()
    finally:
        store.close()
    if not len(kept.upset):
        print(f"learn: no verdicts kept in {cfg.store_path}; nothing to learn from")
        return 1
    versions = ModelVersions(cfg.models_dir)
    current = versions.current()
    model_dir = versions.path(current) if current else Path(config.model.path).expanduser() if config.model.path \
        else DEFAULT_DIR
    site_stats = Path(config.model.site_stats_path).expanduser() if config.model.site_stats_path else None
    staged = versions.staging()
    try:
        report = refit(model_dir, SiteVerdicts(kept.features, kept.upset, kept.calls), staged,
                       site_stats=site_stats if site_stats is not None and site_stats.is_file() else None)
    except ValueError as exc:
        shutil.rmtree(staged, ignore_errors=True)
        print(f"learn: {exc}")
        return 1
    print(report.summary())
    if not report.improved:
        shutil.rmtree(staged, ignore_errors=True)
        print(f"learn: validation did not improve; {current or 'the configured model'} stays")
        return 0
    name = versions.add(staged)
    versions.set_current(name)
    print(f"learn: {name} is current ({versions.path(name)}); {ask_daemon(config)}")
    return 0


def rollback(config: Config) -> int:
    versions = ModelVersions(config.learning.models_dir)
    try:
        target = versions.rollback()
    except ValueError as exc:
        print(f"learn --rollback: {exc}")
        return 1
    print(f"learn --rollback: {target or 'the configured model'} is current; {ask_daemon(config)}")
    return 0


def forget(config: Config, call_id: str) -> int:
    store = FeatureStore(config.learning.store_path)
    try:
        print(f"learn --forget: {store.delete_call(call_id)} windows of call {call_id} deleted")
    finally:
        store.close()
    return 0


def ask_daemon(config: Config) -> str:
    """``POST /model/reload`` to the daemon of ``config``; what happened, in words."""
    api = config.api
    token = read_secret(api.token, api.token_file, "EMOVOICE_API_TOKEN")
    if not api.enabled or not token:
        return "send the daemon SIGHUP to switch (no API token in the config)"
    scheme, context = "http", None
    if api.tls_cert:
        scheme, context = "https", ssl.create_default_context(cafile=api.tls_cert)
        context.check_hostname = False
    host = "127.0.0.1" if api.host in ("0.0.0.0", "::", "") else api.host
    request = urllib.request.Request(f"{scheme}://{host}:{api.port}/model/reload", method="POST",
                                     headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=120, context=context) as response:
            answer = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return f"the daemon did not switch: {exc.code} {exc.read().decode(errors='replace')[:200]}"
    except (OSError, ValueError) as exc:
        return f"the daemon did not answer ({exc}); it switches at its next SIGHUP or start"
    return f"the daemon runs {answer['version']}" + (" (switched)" if answer.get("switched") else "")
