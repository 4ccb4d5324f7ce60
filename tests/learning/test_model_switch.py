"""Learnt model versions in a running daemon: the hot switch with a live call, rollback, verdicts to the store."""
from __future__ import annotations

import asyncio
import dataclasses
import json
import shutil
import time
import uuid
from pathlib import Path

import aiohttp
import pytest
import yaml

from emovoice_daemon.config import parse_config
from emovoice_daemon.learning.store import FeatureStore, Row
from emovoice_daemon.learning.versions import ModelVersions
from emovoice_daemon.service.daemon import Daemon
from emovoice_daemon.tools import learn
from emovoice_daemon.tools.simulate import audiosocket_frames
from tests.scoring.test_whisper import randomised, tiny_encoder_dir, tiny_head_dir
from tests.support.scripted import tone_call

TOKEN = "s3cret-token"


def tiny_models(tmp_path: Path) -> Path:
    """A tiny Whisper-encoder head model (the shape of the shipped default, random weights) whose escalation
    settings raise an alert on the first scored window (the pages then have an escalation to give a verdict on)."""
    head = tiny_head_dir(tmp_path / "base", tiny_encoder_dir(tmp_path / "enc"), head_hidden=16)
    (head / "escalation.json").write_text(json.dumps({"enter": 0.01, "exit": 0.0, "alert": 0.01, "min_duration_s": 0.0}))
    return head


def learnt_copy(base: Path, staged: Path, seed: int) -> None:
    """A 'refit': the base directory with other head weights (as refit writes a complete model directory)."""
    from emovoice_daemon.scoring.models.whisper import EmoVoiceWhisperForAudioClassification

    shutil.copytree(base, staged, dirs_exist_ok=True)
    model = EmoVoiceWhisperForAudioClassification.from_pretrained(str(base))
    randomised(model.head, seed=seed)
    model.save_pretrained(staged, state_dict=model.head_state_dict())


def daemon_config(tmp_path: Path, model: Path) -> str:
    return yaml.safe_dump({
        "audiosocket": {"port": 0, "idle_timeout_s": 300}, "api": {"port": 0, "token": TOKEN}, "model": {"path": str(model), "site_stats_path": ""},
        "events": {"log_path": str(tmp_path / "events.jsonl")}, "history": {"path": str(tmp_path / "h.sqlite3")},
        "learning": {"store_path": str(tmp_path / "learning" / "v.sqlite3"), "models_dir": str(tmp_path / "models")}})


@pytest.fixture
async def running(tmp_path: Path):
    daemon = Daemon(parse_config(daemon_config(tmp_path, tiny_models(tmp_path))))
    await daemon.start()
    events: list[dict] = []
    daemon.bus.add_sink(events.append)
    daemon.events = events  # type: ignore[attr-defined]
    try:
        yield daemon
    finally:
        await daemon.stop()


async def api(daemon: Daemon, method: str, path: str, **kwargs) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as session:
        async with session.request(method, f"http://{daemon.api_address}{path}",
                                   headers={"Authorization": f"Bearer {TOKEN}"}, **kwargs) as resp:
            return resp.status, await resp.json()


async def until(predicate, timeout: float = 30.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.05)


async def test_switch_with_a_live_call_then_rollback_and_verdicts_kept(running: Daemon, tmp_path: Path) -> None:
    daemon, events = running, running.events  # type: ignore[attr-defined]
    call_id = str(uuid.uuid4())
    frames = audiosocket_frames(call_id, tone_call([("calm", 6), ("angry", 6)]))
    half = len(frames) // 2
    port = int(daemon.audiosocket.address.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"".join(frames[:half]))
    await writer.drain()
    scores = lambda: [e for e in events if e["type"] == "score" and e["call_id"] == call_id]  # noqa: E731
    await until(lambda: len(scores()) >= 2)
    assert {e["model"]["version"] for e in scores()} == {"base"}

    versions = ModelVersions(tmp_path / "models")
    staged = versions.staging()
    learnt_copy(Path(daemon.config.model.path), staged, seed=5)
    versions.set_current(versions.add(staged))
    status, answer = await api(daemon, "POST", "/model/reload")
    assert status == 200 and answer == {"version": "v0001", "switched": True, "from": "base"}
    assert (await api(daemon, "POST", "/model/reload"))[1]["switched"] is False  # already running it
    before = len(scores())
    writer.write(b"".join(frames[half:]))
    await writer.drain()
    await until(lambda: len(scores()) >= before + 2)
    assert scores()[-1]["model"]["version"] == "v0001"

    verdict = await api(daemon, "POST", f"/calls/{call_id}/feedback", json={"verdict": "upset"})
    assert verdict[0] == 200 and verdict[1]["role"] == "mixed"
    writer.close()
    await until(lambda: any(e["type"] == "call.ended" and e["call_id"] == call_id for e in events))
    ended = next(e for e in events if e["type"] == "call.ended" and e["call_id"] == call_id)
    assert ended["reason"] in ("eof", "hangup") and [e["type"] for e in events if e["call_id"] == call_id].count("call.started") == 1

    await daemon.recorder.drain()
    kept = FeatureStore(tmp_path / "learning" / "v.sqlite3").load()
    assert len(kept.upset) > 0 and kept.upset.all() and kept.features.shape[1] == 64  # 2 layers x mean,std x d_model 16
    history = await api(daemon, "GET", f"/calls/{call_id}")
    assert [v["verdict"] for v in history[1]["verdicts"]] == ["upset"]

    config = dataclasses.replace(daemon.config, api=dataclasses.replace(daemon.config.api,
                                                                        port=int(daemon.api_address.rsplit(":", 1)[1])))
    assert await asyncio.to_thread(learn.rollback, config) == 0
    assert daemon.model_version == "base" and versions.current() is None
    assert await asyncio.to_thread(learn.rollback, config) == 1  # nothing left to roll back
    assert (await api(daemon, "DELETE", f"/learning/calls/{call_id}"))[1]["deleted_windows"] == len(kept.upset)


async def test_a_broken_current_version_falls_back_to_the_configured_model_in_one_warning(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    versions = ModelVersions(tmp_path / "models")
    staged = versions.staging()
    (staged / "config.json").write_text("{not json")
    versions.set_current(versions.add(staged))
    daemon = Daemon(parse_config(daemon_config(tmp_path, tiny_models(tmp_path))))
    await daemon.start()
    try:
        assert daemon.model_info["version"] == "base"
        assert len([r for r in caplog.records if "learnt model v0001 cannot load" in r.getMessage()]) == 1
    finally:
        await daemon.stop()


def seed_site_verdicts(store_path: Path, n_calls: int = 12) -> None:
    """Verdict windows as a site would give them: every other call upset from its 4th window, the upset windows
    along one direction of the (tiny model's 64-dimensional) feature space."""
    from tests.learning.test_refit import site_calls

    site = site_calls(n_calls, 0)
    store = FeatureStore(store_path)
    for i, (call, upset, x) in enumerate(zip(site.calls, site.upset, site.features)):
        store.record([Row(str(call), "mixed", f"w{i}", "upset" if upset else "calm", "supervisor", time.time(),
                          float(i), float(i + 3), bool(upset), x)])
    store.close()


async def test_verdicts_in_chromium_on_the_agent_page_and_wallboard_then_learn_switch_and_rollback(
        running: Daemon, tmp_path: Path) -> None:
    from tests.support.browser import Browser

    daemon, events = running, running.events  # type: ignore[attr-defined]
    daemon.notifier.tokens["201"] = "tok-201"
    call_id = str(uuid.uuid4())
    daemon.calls.expect(call_id, {"agent": "201", "name": "Ms Jones"})
    port = int(daemon.audiosocket.address.rsplit(":", 1)[1])
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"".join(audiosocket_frames(call_id, tone_call([("angry", 8)]))))
    await writer.drain()
    feedback = lambda: [e for e in events if e["type"] == "feedback"]  # noqa: E731
    base = f"http://{daemon.api_address}"
    async with Browser() as browser:
        await browser.goto(f"{base}/agent/#agent=201&token=tok-201")
        await browser.wait_for("document.querySelector('.prompt button[data-verdict=confirmed]') !== null")
        await browser.js("document.querySelector('.prompt button[data-verdict=confirmed]').click()")
        await browser.wait_for("document.querySelector('.prompt .verdict').textContent.includes('noted')")
        await until(lambda: len(feedback()) == 1)
        assert (feedback()[0]["verdict"], feedback()[0]["by"]) == ("confirmed", "agent 201")

        await browser.goto(f"{base}/supervisor/#token={TOKEN}")
        row = f"document.querySelector('#rows tr[data-call-id=\"{call_id}\"]')"
        await browser.wait_for(f"{row} && {row}.querySelector('button[data-verdict=dismissed]') !== null")
        await browser.js(f"{row}.querySelector('button[data-verdict=dismissed]').click()")
        await until(lambda: len(feedback()) == 2)
        await browser.js(f"{row}.querySelector('button[data-verdict=calm]').click()")
        await until(lambda: len(feedback()) == 3)
        assert await browser.wait_for("document.getElementById('message').textContent.includes('noted')")
    assert [(e["verdict"], e["by"]) for e in feedback()[1:]] == [("dismissed", "supervisor"), ("calm", "supervisor")]
    assert feedback()[1]["escalation_id"] == feedback()[0]["escalation_id"]

    await daemon.recorder.drain()
    assert daemon.recorder.store.counts()["windows"] > 0  # the page's verdicts kept their windows' features
    seed_site_verdicts(Path(daemon.config.learning.store_path))
    config = dataclasses.replace(daemon.config, api=dataclasses.replace(daemon.config.api,
                                                                        port=int(daemon.api_address.rsplit(":", 1)[1])))
    assert await asyncio.to_thread(learn.learn, config) == 0
    assert daemon.model_version == "v0001" and (tmp_path / "models" / "v0001" / "learned.json").is_file()
    before = len([e for e in events if e["type"] == "score"])
    writer.write(b"".join(audiosocket_frames(call_id, tone_call([("angry", 4)]))[1:]))  # the same live call goes on
    await writer.drain()
    await until(lambda: len([e for e in events if e["type"] == "score"]) >= before + 2)
    assert [e for e in events if e["type"] == "score"][-1]["model"]["version"] == "v0001"
    assert await asyncio.to_thread(learn.rollback, config) == 0 and daemon.model_version == "base"
    writer.close()
    await until(lambda: any(e["type"] == "call.ended" and e["call_id"] == call_id for e in events))
    assert [e["type"] for e in events if e["call_id"] == call_id].count("call.ended") == 1
