"""service.workers: 2 worker processes behind one listener, one event stream, one API and one history."""
from __future__ import annotations

import asyncio
import contextlib
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

from bench.loadgen import voiced_audio, windows_due
from emovoice_daemon.tools.simulate import audiosocket_frames, load_call_audio, play_call
from tests.conftest import DaemonProcess, running, start_daemon

SAMPLES = Path(__file__).resolve().parents[2] / "emovoice_daemon" / "tools" / "samples"


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    """One daemon with 2 workers for the module (starting three processes with torch takes a while)."""
    tmp = tmp_path_factory.mktemp("workers")
    overrides = {"service": {"workers": 2}, "history": {"path": str(tmp / "history.sqlite3")},
                 "engine": {"max_lag_s": 30.0},  # a loaded test box delays windows; none may be skipped for it
                 "audiosocket": {"idle_timeout_s": 60.0}}  # calls that pause half-way stay open
    with running(start_daemon(tmp, overrides, ready_s=300)) as daemon:
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
    overload_before = metric(pool, 'emovoice_windows_total{outcome="overload"}')
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
    assert metric(pool, 'emovoice_windows_total{outcome="overload"}') == overload_before  # skips were silence only


async def test_a_killed_worker_is_restarted_and_the_other_workers_calls_go_on(pool: DaemonProcess) -> None:
    """Four calls pause half-way (connections open) until every window so far is scored and counted; one
    worker is killed; the survivor's calls finish with every (voiced) window scored, the killed worker's
    legs end ``worker_lost`` with what was seen of them, and its windows stay counted exactly."""
    scored_metric, overload_metric = 'emovoice_windows_total{outcome="scored"}', 'emovoice_windows_total{outcome="overload"}'
    scored_before, overload_before = metric(pool, scored_metric), metric(pool, overload_metric)
    ids = [str(uuid.uuid4()) for _ in range(4)]
    halfway, resume = asyncio.Barrier(len(ids) + 1), asyncio.Event()
    calls = [asyncio.create_task(paused_call(pool.audiosocket_port, voiced_audio(10, seed=i), cid, halfway, resume))
             for i, cid in enumerate(ids)]
    async with asyncio.timeout(60):
        await halfway.wait()
    assert [w["legs"] for w in health(pool)["workers"]] == [2, 2]
    victim, survivor = health(pool)["workers"]
    scores = lambda events: [e for e in events if e["type"] == "score" and e["call_id"] in ids]  # noqa: E731
    await asyncio.to_thread(pool.wait_for, lambda ev: len(scores(ev)) == 4 * windows_due(5 * 8000))
    await until(lambda: metric(pool, scored_metric) - scored_before == 4 * windows_due(5 * 8000), 15)
    os.kill(victim["pid"], signal.SIGKILL)
    await until(lambda: "workers" in health(pool)["reasons"], 30)  # /health says so until it is back
    resume.set()
    await asyncio.gather(*calls)
    events = await asyncio.to_thread(
        pool.wait_for, lambda ev: sum(e["type"] == "call.ended" and e["call_id"] in ids for e in ev) == 4)
    ended = {e["call_id"]: e for e in events if e["type"] == "call.ended" and e["call_id"] in ids}
    reasons = Counter(e["reason"] for e in ended.values())
    assert reasons == {"worker_lost": 2, "eof": 2}, reasons  # the killed worker's 2 legs, the other's 2 whole calls
    for cid, e in ended.items():
        mine = [s for s in scores(events) if s["call_id"] == cid]
        if e["reason"] == "eof":  # every window of 10 s of voiced audio scored: none skipped, for overload or else
            assert (e["summary"]["windows_scored"], e["summary"]["windows_skipped"], len(mine)) == (8, 0, 8)
        else:
            assert e["summary"] == {"duration_s": 5.0, "windows_scored": 3, "started": e["summary"]["started"],
                                    "last_seen": max(x["ts"] for x in events if x["call_id"] == cid and x is not e)}
    await until(lambda: all(w["ready"] for w in health(pool)["workers"]), timeout=300)
    assert "workers" not in health(pool)["reasons"]
    restarted = health(pool)["workers"]
    assert restarted[0]["pid"] not in (victim["pid"], survivor["pid"]) and restarted[1]["pid"] == survivor["pid"]
    again = [str(uuid.uuid4()) for _ in range(2)]
    await asyncio.gather(*(play_call("127.0.0.1", pool.audiosocket_port, voiced_audio(4, seed=9), cid)
                           for cid in again))
    after = await asyncio.to_thread(
        pool.wait_for, lambda ev: sum(e["type"] == "call.ended" and e["call_id"] in again for e in ev) == 2)
    assert {e["call_id"] for e in after if e["type"] == "score"} >= set(again)
    # the killed worker's 6 windows stay counted: the total is every window of the test, exactly
    total = 2 * 3 + 2 * 8 + 2 * windows_due(4 * 8000)
    with contextlib.suppress(TimeoutError):  # the workers report every second
        await until(lambda: metric(pool, scored_metric) - scored_before >= total, 15)
    assert metric(pool, scored_metric) - scored_before == total, "windows scored by the killed worker went uncounted"
    assert metric(pool, overload_metric) == overload_before


async def paused_call(port: int, pcm: np.ndarray, call_id: str, halfway: asyncio.Barrier,
                      resume: asyncio.Event) -> None:
    """A real-time call that stops sending half-way, its connection open, until ``resume``; a connection
    the daemon lost (its worker was killed) ends it early."""
    frames = audiosocket_frames(call_id, pcm)
    middle = 1 + (len(frames) - 1) // 2
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    drain = asyncio.create_task(reader.read())
    try:
        await _real_time(writer, frames[:middle])
        await halfway.wait()
        await resume.wait()
        await _real_time(writer, frames[middle:])
    except ConnectionError:
        pass
    finally:
        drain.cancel()
        writer.close()


async def _real_time(writer: asyncio.StreamWriter, frames: list[bytes]) -> None:
    loop = asyncio.get_running_loop()
    start = loop.time()
    for i, frame in enumerate(frames):
        writer.write(frame)
        await writer.drain()
        await asyncio.sleep(max(0.0, start + (i + 1) * 0.02 - loop.time()))
