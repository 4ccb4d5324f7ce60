"""Demo mode: a real daemon on its real ports, fed sample calls through the AudioSocket port."""
from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from rich.console import Console

from emovoice_daemon.config import Config
from emovoice_daemon.outputs.events import Event
from emovoice_daemon.service.daemon import Daemon
from emovoice_daemon.service.lifecycle import stop_on_signals
from emovoice_daemon.tools.simulate import load_call_audio, play_call

console = Console()


def banner(daemon: Daemon, wavs: list[Path], bundled: bool) -> None:
    info = daemon.model_info
    console.rule("[bold]EmoVoice demo")
    console.print(f"AudioSocket  {daemon.audiosocket.address}    API http://{daemon.api_address}")
    console.print(f"API token    {daemon.api_token}")
    console.print(f"Event log    {daemon.config.events.log_path}")
    if info["trained"]:
        console.print(f"Model        {info['name']} (trained)")
    else:
        console.print(f"[bold red]Model        {info['name']}: UNTRAINED placeholder - scores are random, "
                      "not emotion[/]")
    console.print(f"Calls        {', '.join(w.name for w in wavs)}")
    if bundled:
        console.print("[yellow]The bundled calls are espeak-ng synthetic speech. The model learned from human voices and "
                      "tends to hear synthetic ones as NEGATIVE; play your own recordings: "
                      "emovoice-daemon demo call1.wav call2.wav[/]")
    console.rule()


def show(event: Event) -> None:
    call = event["call_id"][:8]
    if event["type"] == "score":
        p = event["probs"]
        console.print(f"{call} {event['role']:<8} score  {event['window']['start']:6.1f}-{event['window']['end']:<6.1f}"
                      f" NEG {p['NEGATIVE']:.2f}  NEU {p['NEUTRAL']:.2f}  POS {p['POSITIVE']:.2f}  -> {event['label']}")
    elif event["type"].startswith("escalation"):
        console.print(f"[bold yellow]{call} {event['type']} {event.get('severity', '')} {event.get('reason', '')}[/]")
    else:
        console.print(f"[cyan]{call} {event['type']}[/] {event.get('reason', '')}")


async def _print_events(daemon: Daemon) -> None:
    async for event in daemon.bus.subscribe():
        show(event)


async def _call_loop(daemon: Daemon, wavs: list[Path], index: int) -> None:
    host, port = daemon.audiosocket.address.rsplit(":", 1)
    audio = [load_call_audio(w) for w in wavs]
    while True:
        await play_call(host, int(port), audio[index % len(audio)])
        index += 1
        await asyncio.sleep(1.0)


async def _until_stopped(duration: float) -> None:
    """Wait for Ctrl-C / SIGTERM, or for ``duration`` seconds when it is set."""
    stop = stop_on_signals()
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(stop.wait(), duration or None)
    if stop.is_set():
        console.print("stopping: scoring what is buffered, then exit")


async def run_demo(config: Config, wavs: list[Path], calls: int, duration: float, bundled: bool = False) -> None:
    """Start the daemon, loop the sample calls through it, print events; stop on Ctrl-C or after ``duration``."""
    daemon = Daemon(config)
    await daemon.start()
    banner(daemon, wavs, bundled)
    tasks = [asyncio.create_task(_print_events(daemon))]
    tasks += [asyncio.create_task(_call_loop(daemon, wavs, i)) for i in range(calls)]
    try:
        await _until_stopped(duration)
    finally:
        for task in tasks:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*tasks, return_exceptions=True)
        await daemon.stop()
