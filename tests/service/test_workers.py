"""service.workers: 2 worker processes behind one listener, one event stream, one API and one history."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import numpy as np
import pytest

from emovoice_daemon.tools.simulate import load_call_audio, play_call
from tests.conftest import DaemonProcess, running, start_daemon

SAMPLES = Path(__file__).resolve().parents[2] / "emovoice_daemon" / "tools" / "samples"


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    """One daemon with 2 workers for the module (starting three processes with torch takes a while)."""
    tmp = tmp_path_factory.mktemp("workers")
    with running(start_daemon(tmp, {"service": {"workers": 2}, "history": {"path": str(tmp / "history.sqlite3")}},
                              ready_s=300)) as daemon:
        yield daemon


def speech(seconds: float) -> np.ndarray:
    """Real speech (the bundled CREMA-D clips, one after another)."""
    pcm = np.concatenate([load_call_audio(p) for p in sorted(SAMPLES.glob("1035_*.flac"))])
    return np.resize(pcm, int(seconds * 8000))


def health(daemon: DaemonProcess) -> dict:
    return json.loads(daemon.get("/health")[1])


async def watch(daemon: DaemonProcess, sink: list[dict], subscribed: asyncio.Event) -> None:
    url = f"http://127.0.0.1:{daemon.api_port}/events"
    headers = {"Authorization": f"Bearer {daemon.token}"}
    async with aiohttp.ClientSession() as session, session.ws_connect(url, headers=headers) as ws:
        subscribed.set()
        async for msg in ws:
            sink.append(json.loads(msg.data))


def metric(daemon: DaemonProcess, sample: str) -> float:
    """One sample's value on /metrics (0 when absent), e.g. ``emovoice_windows_total{outcome="scored"}``."""
    for line in daemon.get("/metrics", daemon.token)[1].decode().splitlines():
        if line.startswith(sample + " "):
            return float(line.split()[-1])
    return 0.0


async def until(predicate, timeout: float = 60.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.2)


async def test_calls_spread_over_both_workers_on_one_event_stream_and_history(pool: DaemonProcess) -> None:
    events: list[dict] = []
    subscribed = asyncio.Event()
    watcher = asyncio.create_task(watch(pool, events, subscribed))
    await subscribed.wait()
    scored_before = metric(pool, 'emovoice_windows_total{outcome="scored"}')
    scores_before = metric(pool, 'emovoice_events_total{type="score"}')
    ids = [str(uuid.uuid4()) for _ in range(6)]
    calls = [asyncio.create_task(play_call("127.0.0.1", pool.audiosocket_port, speech(6), cid)) for cid in ids]
    busy: list[list[int]] = []

    async def sample_workers() -> None:
        while not all(c.done() for c in calls):
            busy.append([w["legs"] for w in (await asyncio.to_thread(health, pool))["workers"]])
            await asyncio.sleep(0.5)

    await asyncio.gather(*calls, sample_workers())
    await until(lambda: sum(e["type"] == "call.ended" and e["call_id"] in ids for e in events) == 6)
    watcher.cancel()
    assert max(sum(b) for b in busy) == 6 and max(b[0] for b in busy) >= 2 and max(b[1] for b in busy) >= 2
    mine = [e for e in events if e["call_id"] in ids]
    for cid in ids:
        kinds = Counter(e["type"] for e in mine if e["call_id"] == cid)
        [summary] = [e["summary"] for e in mine if e["call_id"] == cid and e["type"] == "call.ended"]
        assert kinds["call.started"] == 1 and kinds["call.ended"] == 1, kinds
        assert kinds["score"] == summary["windows_scored"] >= 1 and summary["windows_skipped"] + kinds["score"] == 4
    seqs = [e["seq"] for e in events]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)  # one daemon-wide sequence over both workers
    logged = {e["seq"]: e for e in pool.events()}
    assert all(logged[e["seq"]] == e for e in mine)  # the JSONL log holds the same events
    listed = json.loads(pool.get("/calls?limit=500", pool.token)[1])["calls"]
    assert {c["call_id"] for c in listed if not c["live"]} >= set(ids)
    # the workers' windows reach the main process's /metrics (every second), their events are counted once
    scores = sum(e["type"] == "score" for e in mine)
    await until(lambda: metric(pool, 'emovoice_windows_total{outcome="scored"}') - scored_before >= scores, 15)
    assert metric(pool, 'emovoice_windows_total{outcome="scored"}') - scored_before == scores
    assert metric(pool, 'emovoice_events_total{type="score"}') - scores_before == scores


async def test_a_killed_worker_is_restarted_and_the_other_workers_calls_go_on(pool: DaemonProcess) -> None:
    ids = [str(uuid.uuid4()) for _ in range(4)]
    calls = [asyncio.create_task(play_call("127.0.0.1", pool.audiosocket_port, speech(10), cid)) for cid in ids]
    await until(lambda: [w["legs"] for w in health(pool)["workers"]] == [2, 2], timeout=30)
    victim, survivor = health(pool)["workers"]
    await until(lambda: metric(pool, 'emovoice_windows_total{outcome="scored"}') > 0)
    scored = metric(pool, 'emovoice_windows_total{outcome="scored"}')
    os.kill(victim["pid"], signal.SIGKILL)
    await asyncio.gather(*calls)
    ended = {e["call_id"]: e for e in await asyncio.to_thread(
        pool.wait_for, lambda ev: sum(e["type"] == "call.ended" and e["call_id"] in ids for e in ev) == 4)
        if e["type"] == "call.ended" and e["call_id"] in ids}
    reasons = Counter(e["reason"] for e in ended.values())
    assert reasons == {"error": 2, "eof": 2}, reasons  # the killed worker's 2 legs, the other's 2 whole calls
    for e in ended.values():
        if e["reason"] == "eof":
            assert e["summary"]["windows_scored"] + e["summary"]["windows_skipped"] == 8  # 10 s: every window
        else:
            assert e["summary"] == {"worker_lost": True}
    await until(lambda: all(w["ready"] for w in health(pool)["workers"]), timeout=300)
    assert metric(pool, 'emovoice_windows_total{outcome="scored"}') >= scored  # the dead worker's windows stay counted
    restarted = health(pool)["workers"]
    assert restarted[0]["pid"] not in (victim["pid"], survivor["pid"]) and restarted[1]["pid"] == survivor["pid"]
    again = [str(uuid.uuid4()) for _ in range(2)]
    await asyncio.gather(*(play_call("127.0.0.1", pool.audiosocket_port, speech(4), cid) for cid in again))
    after = await asyncio.to_thread(
        pool.wait_for, lambda ev: sum(e["type"] == "call.ended" and e["call_id"] in again for e in ev) == 2)
    assert {e["call_id"] for e in after if e["type"] == "score"} >= set(again)
