"""The daemon: builds the components from the config, starts them, and stops them in order."""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import time
from collections import Counter
from typing import Any

from aiohttp import web

from emovoice_daemon.calls import CallManager
from emovoice_daemon.config import Config, resolve_workers
from emovoice_daemon.ingest.ami import AmiClient
from emovoice_daemon.ingest.ari import AriController
from emovoice_daemon.ingest.audiosocket import AudioSocketServer
from emovoice_daemon.ingest.rtp import RtpReceiver
from emovoice_daemon.ingest.sip import SipEndpoint
from emovoice_daemon.judgement.cues import CueTracker
from emovoice_daemon.judgement.policy import describe, policy_factory, with_model_defaults
from emovoice_daemon.judgement.summary import LegSummary
from emovoice_daemon.learning.capture import VerdictRecorder
from emovoice_daemon.learning.recent import RecentWindows
from emovoice_daemon.learning.versions import ModelVersions
from emovoice_daemon.outputs import metrics
from emovoice_daemon.outputs.api import ApiContext, api_token, start_api
from emovoice_daemon.outputs.eventlog import EventLog
from emovoice_daemon.outputs.events import EventBus, journal
from emovoice_daemon.outputs.feedback import FeedbackDesk
from emovoice_daemon.outputs.history import CallHistory
from emovoice_daemon.outputs.jetstream import JetStreamPublisher
from emovoice_daemon.outputs.notifier import AgentNotifier
from emovoice_daemon.outputs.supervisor import SupervisorBoard
from emovoice_daemon.outputs.recovery import lost_legs
from emovoice_daemon.outputs.webhook import WebhookSender
from emovoice_daemon.scoring.engine import ScoringEngine
from emovoice_daemon.scoring.models.cascade import Cascade
from emovoice_daemon.scoring.models.loader import Classifier, ModelError, load_classifier
from emovoice_daemon.scoring.recorder import RecordingEngine
from emovoice_daemon.service.health import HealthMonitor, Problem
from emovoice_daemon.service.workers import WorkerPool

log = logging.getLogger(__name__)

BASE_VERSION = "base"  # model_info.version of the configured (or shipped) model: no learnt version is current


class Daemon:
    """All live components of one running daemon."""

    def __init__(self, config: Config, classifier: Classifier | Cascade | None = None) -> None:
        self.config = config
        self.classifier = classifier
        self.api_token = api_token(config.api)
        self.bus = EventBus(config.events.subscriber_queue)
        self.started_at = time.time()
        self._runner: web.AppRunner | None = None
        self.api_address = ""
        self.history: CallHistory | None = None
        self.notifier: AgentNotifier | None = None
        self.board: SupervisorBoard | None = None
        self.webhook: WebhookSender | None = None
        self.jetstream: JetStreamPublisher | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.rtp: RtpReceiver | None = None
        self.ari: AriController | None = None
        self.ami: AmiClient | None = None
        self.sip: SipEndpoint | None = None
        self.workers: WorkerPool | None = None
        self.versions = ModelVersions(config.learning.models_dir)
        self.model_version = BASE_VERSION
        self._switching = asyncio.Lock()
        self.feedback: FeedbackDesk | None = None
        self.recent: RecentWindows | None = None
        self.recorder: VerdictRecorder | None = None

    @property
    def model_escalation(self) -> dict[str, Any]:
        """The loaded model's own escalation defaults (reload applies them again under the new config)."""
        return self.classifier.escalation if self.classifier is not None else {}

    @property
    def model_info(self) -> dict[str, Any]:
        return {"name": self.classifier.name, "trained": self.classifier.trained, "version": self.model_version}

    def _load_model(self) -> Classifier | Cascade:
        """The learnt version ``current`` points at, else (one warning when it cannot load) the configured model."""
        name = self.versions.current()
        if name is not None:
            try:
                classifier = self._load_version(name)
                self.model_version = name
                return classifier
            except ModelError as exc:
                log.warning("learnt model %s cannot load (%s); running the configured model", name, exc)
        self.model_version = BASE_VERSION
        return load_classifier(self.config.model)

    def _load_version(self, name: str | None) -> Classifier | Cascade:
        path = str(self.versions.path(name)) if name else self.config.model.path
        return load_classifier(dataclasses.replace(self.config.model, path=path))

    async def reload_model(self, _: str = "") -> dict[str, Any]:
        """Switch to the version ``current`` points at (or back to the configured model) if it is not the one
        running: loaded beside the running model, then new windows of every live leg are scored with it (no call
        is dropped; live legs keep their escalation state, new legs get the new model's defaults). ValueError
        when the new model cannot be used (the running one stays)."""
        async with self._switching:
            name = self.versions.current()
            if (name or BASE_VERSION) == self.model_version:
                return {"version": self.model_version, "switched": False}
            try:
                classifier = await asyncio.to_thread(self._load_version, name)
                self.engine.set_classifier(classifier)
            except (ModelError, ValueError) as exc:
                raise ValueError(f"model {name or BASE_VERSION} not switched to: {exc}") from None
            old, self.classifier, self.model_version = self.model_version, classifier, name or BASE_VERSION
            self.calls.model_info = self.model_info
            self.config.escalation = with_model_defaults(self.config.escalation, classifier.escalation)
            self.calls.policy_factory = policy_factory(self.config.escalation)
            log.info("model switched from %s to %s (%s) with %d live legs", old, self.model_version, classifier.name,
                     len(self.calls.legs))
            return {"version": self.model_version, "switched": True, "from": old}

    def switch_model_soon(self) -> None:
        """``reload_model`` in a task (SIGHUP); a failure is one log line."""
        async def switch() -> None:
            try:
                await self.reload_model()
            except ValueError as exc:
                log.error("%s", exc)
        self._tasks.append(asyncio.create_task(switch(), name="model-switch"))

    async def forget_call(self, call_id: str) -> dict[str, Any]:
        """The feature store deletes every window of a call (``DELETE /learning/calls/{id}``)."""
        return {"call_id": call_id, "deleted_windows": await asyncio.to_thread(self.recorder.delete_call, call_id)}

    async def start(self) -> None:
        cfg = self.config
        if self.classifier is None:
            self.classifier = await asyncio.to_thread(self._load_model)
        cfg.escalation = with_model_defaults(cfg.escalation, self.classifier.escalation)
        log.info("escalation: %s", describe(cfg.escalation, self.classifier.escalation))
        self.event_log = EventLog(cfg.events.log_path, cfg.events.rotate_bytes, cfg.events.rotate_keep,
                                  cfg.events.fsync_interval_s)
        self.bus.add_sink(self.event_log.write)
        self.bus.add_sink(journal)
        self.engine = ScoringEngine(self.classifier, cfg.pipeline, cfg.engine)
        await self.engine.start()
        self.health_monitor = HealthMonitor(self.event_log, self._window_outcomes, cfg.service.health_window_s,
                                            cfg.service.health_max_overload, self._component_problems())
        self._tasks.append(asyncio.create_task(self.health_monitor.run(), name="health"))
        leg_engine = RecordingEngine(self.engine, cfg.debug.record_dir) if cfg.debug.record_audio else self.engine
        self._start_learning()
        self.calls = CallManager(leg_engine, self.bus, policy_factory(cfg.escalation), self.model_info,
                                 self.recent.add if self.recent is not None else None)
        self._start_escalation_outputs()
        self._recover_lost_legs()
        if cfg.audiosocket.enabled and resolve_workers(cfg.service.workers) > 1:
            self.workers = self.audiosocket = WorkerPool(cfg, self.bus)
        else:
            self.audiosocket = AudioSocketServer(cfg.audiosocket, self.calls)
        if cfg.audiosocket.enabled:
            await self.audiosocket.start()
        await self._start_telephony()
        if cfg.api.enabled:
            await self._start_api()
        log.info("emovoice daemon ready (model %s, trained=%s)", self.classifier.name, self.classifier.trained)

    async def _start_telephony(self) -> None:
        """ARI (with its RTP receiver), the SIP endpoint and the AMI client, each when its section is enabled."""
        cfg = self.config
        if cfg.ari.enabled:
            self.rtp = RtpReceiver(cfg.rtp.stream_timeout_s, cfg.rtp.jitter_depth)
            await self.rtp.start(cfg.rtp.host, cfg.rtp.port, cfg.rtp.receive_buffer_bytes)
            cues = CueTracker(cfg.cues, cfg.pipeline.vad_energy_dbfs, self.bus) if cfg.cues.enabled else None
            if cues is not None:
                self.bus.add_sink(cues.sink)
            self.ari = AriController(cfg.ari, cfg.rtp, self.calls, self.rtp, cues)
            await self.ari.start()
        if cfg.sip.enabled:
            self.sip = SipEndpoint(cfg.sip, self.calls, cfg.rtp.jitter_depth)
            await self.sip.start()
        if cfg.ami.enabled:
            self.ami = AmiClient(cfg.ami, self._bind_agent)
            self.bus.add_sink(self.ami.on_escalation)
            await self.ami.start()

    def _recover_lost_legs(self) -> None:
        """After a kill: ``call.ended`` (reason ``lost``) for every leg the last run left open in the event log."""
        if not self.event_log.crashed:
            return
        replayed: dict[tuple[str, str], LegSummary] = {}
        lost = lost_legs(self.event_log.files(),
                         lambda leg, event: replayed.setdefault((leg.call_id, leg.role), LegSummary()).replay(event))
        for leg in lost:
            summary = {**replayed.get((leg.call_id, leg.role), LegSummary()).summary(leg.duration_s), **leg.summary()}
            del summary["windows_skipped"]  # not in the log
            self.bus.publish(self.bus.make_event("call.ended", leg.call_id, leg.role, reason="lost", summary=summary))
        log.warning("the last run did not stop cleanly: %d legs it left open are ended as lost", len(lost))

    async def _end_legs(self) -> None:
        """Close the sources (a connection's audio already received is still scored), then end what is left."""
        await self.audiosocket.close_all()
        await self._stop_telephony()
        await self.calls.end_all("shutdown")

    async def _stop_telephony(self) -> None:
        for component in (self.ami, self.sip, self.ari, self.rtp):
            if component is not None:
                await component.stop()

    def _start_escalation_outputs(self) -> None:
        """Call history, agent notifier, supervisor wallboard, webhook and JetStream, all fed as bus sinks."""
        cfg = self.config
        if cfg.history.enabled:
            self.history = CallHistory(cfg.history.path, cfg.history.retention_days)
            self.bus.add_sink(self.history.sink)
            self._tasks.append(asyncio.create_task(self.history.run(), name="call-history"))
        if cfg.notifier.enabled:
            self.notifier = AgentNotifier(cfg.notifier, self.api_token)
            self.bus.add_sink(self.notifier.sink)
        if cfg.api.enabled:
            self.board = SupervisorBoard(self.api_token, listen=cfg.ami.enabled)
            self.bus.add_sink(self.board.sink)
        if cfg.api.enabled and cfg.learning.feedback:
            notifier = self.notifier
            self.feedback = FeedbackDesk(
                self.bus, self.api_token, cfg.learning.grace_s,
                agent_of=(lambda c: (call.agent if (call := notifier.calls.get(c)) else None)) if notifier else None,
                authenticate=notifier.authenticate if notifier else None)
            self.bus.add_sink(self.feedback.sink)
        if cfg.webhook.url:
            self.webhook = WebhookSender(cfg.webhook)
            self.bus.add_sink(self.webhook.sink)
            self._tasks.append(asyncio.create_task(self.webhook.run(), name="webhook"))
        if cfg.jetstream.enabled:
            self.jetstream = JetStreamPublisher(cfg.jetstream)
            self.bus.add_sink(self.jetstream.sink)
            self._tasks.append(asyncio.create_task(self.jetstream.run(), name="jetstream"))

    def _start_learning(self) -> None:
        """Verdicts (with the API): the desk; with ``keep_features``: recent window features and the store."""
        cfg = self.config.learning
        if not (cfg.feedback and self.config.api.enabled):
            return
        if cfg.keep_features:
            self.recent = RecentWindows(cfg.recent_s, cfg.grace_s)
            self.recorder = VerdictRecorder(cfg, self.recent)
            self.bus.add_sink(self.recent.sink)
            self.bus.add_sink(self.recorder.sink)
            self._tasks.append(asyncio.create_task(self.recorder.run(), name="feature-store"))

    def _window_outcomes(self) -> Counter[str]:
        """Windows by outcome, this process's engine and the worker processes' together."""
        return self.engine.outcomes + metrics.EXPOSED.by_label("emovoice_windows_total", "outcome")

    def _component_problems(self) -> dict[str, Problem]:
        """/health reasons of the components that can say what they are losing (each may be off)."""
        window_s = self.config.service.health_window_s
        return {"jetstream": lambda: self.jetstream.problem(window_s) if self.jetstream else None,
                "workers": lambda: self.workers.problem() if self.workers else None,
                "connections": lambda: self.audiosocket.refusals.problem(window_s)
                if getattr(self, "audiosocket", None) else None}

    def _bind_agent(self, call_id: str, agent: str) -> None:
        """AMI saw a queue member answer the call: ``call.agent`` tells the notifier (the agent gets the call's
        prompts), the history and emovoice-top."""
        self.bus.publish(self.bus.make_event("call.agent", call_id, "agent", agent=agent))

    async def _start_api(self) -> None:
        cfg = self.config.api
        context = ApiContext(self.api_token, cfg.metrics_public, self.bus, self.health, self.history, self.notifier,
                             self.ami.listen_in if self.ami is not None else None, self.board, self.feedback,
                             self.reload_model, self.forget_call if self.recorder is not None else None)
        self._runner, self.api_address = await start_api(cfg, context)

    def health(self) -> dict[str, Any]:
        reasons = self.health_monitor.check()
        workers = {"workers": self.workers.health()} if self.workers else {}
        return {"status": "degraded" if reasons else "ok", "reasons": reasons,
                "legs": len(self.calls.legs) + (self.workers.live_legs if self.workers else 0),
                **workers, "model": self.model_info,
                "uptime_s": round(time.time() - self.started_at, 1),
                "device": str(getattr(self.classifier, "device", "cpu")),
                "cpu_load": round(os.getloadavg()[0], 2), "cpus": os.cpu_count()}

    async def stop(self, legs_timeout_s: float | None = None) -> None:
        """Stop accepting calls; every leg ends once, its received audio scored (for at most ``legs_timeout_s``:
        windows still unscored then are answered ``overload``); close everything."""
        await self.audiosocket.stop_accepting()
        ending = asyncio.create_task(self._end_legs())
        if not (await asyncio.wait({ending}, timeout=legs_timeout_s))[0]:
            log.warning("drain: %d legs still being scored after %.1f s; their remaining windows are skipped",
                        len(self.calls.legs), legs_timeout_s)
        await self.engine.stop()
        await ending
        if self.history is not None:
            await self.history.drain()
        if self.recorder is not None:
            await self.recorder.drain()
        if self.webhook is not None:  # the last call.ended / escalation.cleared reach the PBX too
            await self.webhook.drain(self.config.webhook.timeout_s)
        if self.jetstream is not None:  # so do the last events of every call on the stream
            await self.jetstream.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.history is not None:
            self.history.close()
        if self.recorder is not None:
            self.recorder.close()
        if self.notifier is not None:
            await self.notifier.close()
        if self._runner:
            await self._runner.cleanup()
        self.event_log.close()
        log.info("emovoice daemon stopped")
