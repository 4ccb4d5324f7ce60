"""Demo mode: a real daemon on its real ports, fed sample calls through the AudioSocket port.

The bundled calls are composed of CREMA-D clips (human actors, 8 kHz; samples/README.md
for the licence) of two actors the shipped model never trained on (held-out speakers of
its fold): one caller stays calm, the other is calm for about 10 s and then increasingly
angry. The angry call is bound to a demo agent, whose page the banner links.
"""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import secrets
import shutil
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.console import Console

from emovoice_daemon.config import Config
from emovoice_daemon.outputs.events import Event
from emovoice_daemon.service.daemon import Daemon
from emovoice_daemon.service.lifecycle import stop_on_signals
from emovoice_daemon.tools.simulate import load_call_audio, play_call

console = Console()

SAMPLES = Path(__file__).resolve().parent / "samples"
RATE = 8000
DEMO_AGENT = "201"
ALERT_WITHIN_S = 6.0  # the angry call's alert comes within this long of the first angry clip (tested)


@dataclass(frozen=True)
class DemoCall:
    """One looped call: its name in the output, what it is, its audio and (optionally) its agent."""

    name: str
    story: str
    audio: np.ndarray = dataclasses.field(repr=False)
    agent: str = ""
    anger_at_s: float | None = None  # where the first angry clip starts


# CREMA-D clip names: <actor>_<sentence>_<emotion>_<level>; actors 1053 (f) and 1035 (m) are test
# speakers of the shipped model's fold (training/configs/default.yaml, ship: fold0).
CALM_CLIPS = ("1053_IWW_NEU_XX", "1053_IOM_NEU_XX", "1053_TSI_NEU_XX", "1053_DFA_NEU_XX", "1053_MTI_NEU_XX",
              "1053_ITH_NEU_XX", "1053_TAI_NEU_XX")
ANGRY_CLIPS = ("1035_WSI_NEU_XX", "1035_IWL_NEU_XX", "1035_TIE_NEU_XX", "1035_IOM_NEU_XX", "1035_WSI_ANG_XX",
               "1035_IEO_ANG_MD", "1035_IEO_ANG_HI", "1035_TAI_ANG_XX", "1035_IOM_ANG_XX")


def compose(clips: tuple[str, ...]) -> tuple[np.ndarray, float | None]:
    """The clips back to back (8 kHz int16) and where the first angry (ANG) clip starts, in seconds."""
    parts = [load_call_audio(SAMPLES / f"{clip}.flac") for clip in clips]
    angry = [i for i, clip in enumerate(clips) if "_ANG_" in clip]
    anger_at = sum(len(p) for p in parts[:angry[0]]) / RATE if angry else None
    return np.concatenate(parts), anger_at


def bundled_calls() -> list[DemoCall]:
    calm, _ = compose(CALM_CLIPS)
    angry, anger_at = compose(ANGRY_CLIPS)
    return [DemoCall("calm-throughout", "a calm caller from start to end: expect no escalation", calm),
            DemoCall("calm-then-angry", f"calm, then increasingly angry from {anger_at:.0f} s: expect an alert "
                     f"within {ALERT_WITHIN_S:.0f} s of that, on agent {DEMO_AGENT}'s page", angry, DEMO_AGENT,
                     anger_at)]


def file_calls(paths: list[Path]) -> list[DemoCall]:
    return [DemoCall(p.stem, f"your recording {p.name}", load_call_audio(p)) for p in paths]


def with_demo_agent(config: Config) -> Config:
    """The config with a token for the demo agent (kept if the config already has one) and site statistics kept
    in memory only: the demo's looped calls never teach the machine's live site (``model.site_stats_path``)."""
    agents = {DEMO_AGENT: secrets.token_urlsafe(16), **config.notifier.agents}
    return dataclasses.replace(config, notifier=dataclasses.replace(config.notifier, agents=agents),
                               model=dataclasses.replace(config.model, site_stats_path=""))


def runnable(script: str) -> str:
    """How to type one of this installation's commands here: its bare name when PATH finds this one, else its path
    (relative to the working directory when below it, e.g. ``.venv/bin/emovoice-top`` in a checkout)."""
    path = Path(sys.executable).parent / script
    if not path.exists() or shutil.which(script) == str(path):
        return script
    with contextlib.suppress(ValueError):
        return str(path.relative_to(Path.cwd()))
    return str(path)


def banner(daemon: Daemon, calls: list[DemoCall]) -> None:
    info, api = daemon.model_info, daemon.api_address
    console.rule("[bold]EmoVoice demo")
    console.print(f"AudioSocket  {daemon.audiosocket.address}    API http://{api}")
    console.print(f"API token    {daemon.api_token}")
    console.print(f"Event log    {daemon.config.events.log_path}")
    if info["trained"]:
        console.print(f"Model        {info['name']} (trained)")
    else:
        console.print(f"[bold red]Model        {info['name']}: UNTRAINED placeholder - scores are random, "
                      "not emotion[/]")
    console.print("Calls        " + "\n             ".join(f"{c.name}: {c.story}" for c in calls), highlight=False)
    agents = sorted({c.agent for c in calls if c.agent})
    if api and daemon.notifier is not None:
        for agent in agents:
            token = daemon.notifier.tokens.get(agent, daemon.api_token)
            console.print(f"Agent page   http://{api}/agent/#agent={agent}&token={token}", highlight=False, soft_wrap=True)
    if api:
        console.print(f"Supervisor   {runnable('emovoice-top')} --url http://{api} --token {daemon.api_token}",
                      highlight=False, soft_wrap=True)
    if any(c.anger_at_s is not None for c in calls):
        console.print("[dim]Voices: CREMA-D actors (Cao et al. 2014, ODbL 1.0 / DbCL 1.0) the model never trained on; "
                      f"play your own recordings with: {runnable('emovoice-daemon')} demo call1.wav call2.wav[/]",
                      highlight=False)
    console.rule()


def show(event: Event, names: dict[str, str]) -> None:
    call = f"{names.get(event['call_id'], event['call_id'][:8]):<16}"
    if event["type"] == "score":
        p = event["probs"]
        console.print(f"{call} score  {event['window']['start']:5.1f}-{event['window']['end']:<5.1f} s"
                      f"  NEG {p['NEGATIVE']:.2f}  NEU {p['NEUTRAL']:.2f}  POS {p['POSITIVE']:.2f}  -> {event['label']}",
                      highlight=False)
    elif event["type"].startswith("escalation"):
        console.print(f"[bold yellow]{call} {event['type']} {event.get('severity', '')} at {event.get('at', 0):.0f} s: "
                      f"{event.get('reason', '')}[/]", highlight=False)
    else:
        console.print(f"[cyan]{call} {event['type']}[/] {event.get('reason', '')}", highlight=False)


async def _print_events(daemon: Daemon, names: dict[str, str]) -> None:
    async for event in daemon.bus.subscribe():
        if event["type"] == "call.started" and event.get("meta", {}).get("name"):
            names.setdefault(event["call_id"], str(event["meta"]["name"]))
        show(event, names)


async def _call_loop(daemon: Daemon, call: DemoCall, names: dict[str, str]) -> None:
    """Play ``call`` again and again, each time as a new call id (bound to its agent, if any)."""
    host, port = daemon.audiosocket.address.rsplit(":", 1)
    while True:
        call_id = str(uuid.uuid4())
        names[call_id] = call.name
        # its name and agent in call.started's meta: on the agent page, in emovoice-top and the history
        daemon.calls.expect(call_id, {"name": call.name, **({"agent": call.agent} if call.agent else {})})
        if call.agent and daemon.notifier is not None:
            daemon.notifier.bind(call_id, call.agent)  # also when worker processes hold the calls
        await play_call(host, int(port), call.audio, call_id)
        await asyncio.sleep(1.0)


async def run_demo(config: Config, calls: list[DemoCall], slots: int, duration: float) -> None:
    """Start the daemon, loop the calls through it (``slots`` at a time), print events; stop on Ctrl-C or after
    ``duration``. Ctrl-C during start-up stops as soon as the daemon is up."""
    stop = stop_on_signals()
    logging.getLogger("emovoice_daemon.journal").setLevel(logging.WARNING)  # the demo prints these events itself
    daemon = Daemon(with_demo_agent(config))
    await daemon.start()
    names: dict[str, str] = {}
    tasks = []
    if not stop.is_set():
        banner(daemon, calls)
        tasks = [asyncio.create_task(_print_events(daemon, names))]
        tasks += [asyncio.create_task(_call_loop(daemon, calls[i % len(calls)], names)) for i in range(slots)]
    try:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), duration or None)
        if stop.is_set():
            console.print("stopping: scoring what is buffered, then exit")
    finally:
        for task in tasks:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*tasks, return_exceptions=True)
        await daemon.stop()
