"""Security: bearer token on every route but /health, optional public /metrics, TLS, loopback defaults,
peer allow-lists, secrets from files/environment, and no call audio on disk unless debug.record_audio."""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import re
import socket
import ssl
import subprocess
import uuid
from pathlib import Path

import aiohttp
import numpy as np
import pytest
import soundfile as sf

from emovoice_daemon.config import LOOPBACK, Config, parse_config
from emovoice_daemon.ingest.rtp import RtpPacket, RtpReceiver, build_rtp
from emovoice_daemon.outputs import api, metrics
from emovoice_daemon.service.daemon import Daemon
from emovoice_daemon.tools.simulate import play_call
from tests.conftest import start_daemon, stop_daemon
from tests.service.conftest import TOKEN, config_text


def route_paths(daemon: Daemon) -> list[tuple[str, str]]:
    """(method, concrete path) of every route of the running API."""
    out = []
    for route in daemon._runner.app.router.routes():
        info = route.resource.get_info()
        path = info.get("path") or re.sub(r"\{(\w+)(:[^}]*)?\}", lambda m: "agent.js" if m[1] == "file" else "x",
                                          info["formatter"])
        if route.method != "HEAD":
            out.append((route.method, path))
    return out


async def test_every_route_except_health_needs_the_bearer_token(running: Daemon) -> None:
    routes = route_paths(running)
    assert {p for _, p in routes} >= {"/health", "/metrics", "/events", "/calls", "/calls/x"}
    base = f"http://{running.api_address}"
    async with aiohttp.ClientSession() as session:
        for method, path in routes:
            public = path in api.PUBLIC_PATHS
            for headers in ({}, {"Authorization": "Bearer " + "x" * len(TOKEN)}, {"Authorization": TOKEN}):
                async with session.request(method, base + path, headers=headers) as resp:
                    assert (resp.status == 401) != public, (method, path, headers, resp.status)
            async with session.request(method, base + path, headers={"Authorization": f"Bearer {TOKEN}"}) as resp:
                assert resp.status != 401, (method, path)
        async with session.get(base + f"/metrics?token={TOKEN}") as resp:
            assert resp.status == 200
        with pytest.raises(aiohttp.WSServerHandshakeError) as exc:
            await session.ws_connect(base + "/events")
        assert exc.value.status == 401
    # the only public paths are /health, the static index and the agent and supervisor pages, whose sockets check
    # the tokens themselves
    pages = {f"/{page}{file}" for page in ("agent", "supervisor") for file in ("", "/", "/ws", f"/{page}.js", f"/{page}.css")}
    assert {p for _, p in routes if p in api.PUBLIC_PATHS} == {"/", "/health", *pages}


async def test_root_says_what_is_served_and_agent_without_slash_redirects(running: Daemon) -> None:
    base = f"http://{running.api_address}"
    async with aiohttp.ClientSession() as session:
        async with session.get(base + "/") as resp:
            text = await resp.text()
            assert resp.status == 200 and "/agent/#agent=ID&token=AGENT_TOKEN" in text and "emovoice-top" in text
            assert TOKEN not in text
        async with session.get(base + "/agent", allow_redirects=False) as resp:
            assert resp.status == 308 and resp.headers["Location"] == "/agent/"
        async with session.get(base + "/agent") as resp:
            assert resp.status == 200 and "text/html" in resp.headers["Content-Type"]
        async with session.get(base + "/supervisor/supervisor.js") as resp:
            assert resp.status == 200 and TOKEN not in await resp.text()  # a static page: no token, no data
        with pytest.raises(aiohttp.WSServerHandshakeError):  # the sockets stay a page's own, at fixed paths
            await session.ws_connect(base + "/supervisor/other")


@pytest.mark.parametrize("running", ["api: {port: 0, token: s3cret-token, metrics_public: true}\n"], indirect=True)
async def test_metrics_can_be_public(running: Daemon) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://{running.api_address}/metrics") as resp:
            assert resp.status == 200 and "emovoice_live_legs" in await resp.text()
        async with session.get(f"http://{running.api_address}/calls") as resp:
            assert resp.status == 401


def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    return cert, key


async def test_api_over_tls_with_a_self_signed_certificate(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    daemon = Daemon(parse_config(config_text(tmp_path, f"api: {{tls_cert: {cert}, tls_key: {key}}}")))
    await daemon.start()
    try:
        trusted = ssl.create_default_context(cafile=str(cert))
        async with aiohttp.ClientSession() as session:
            async with session.get(f"https://{daemon.api_address}/metrics", ssl=trusted,
                                   headers={"Authorization": f"Bearer {TOKEN}"}) as resp:
                assert resp.status == 200
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                await session.get(f"https://{daemon.api_address}/health", ssl=ssl.create_default_context())
            with pytest.raises(aiohttp.ClientError):
                await session.get(f"http://{daemon.api_address}/health")  # no plain HTTP on a TLS listener
    finally:
        await daemon.stop()


def test_every_listener_defaults_to_loopback() -> None:
    config = Config()
    for section in dataclasses.fields(config):
        value = getattr(config, section.name)
        if dataclasses.is_dataclass(value):
            if hasattr(value, "host"):
                assert value.host == "127.0.0.1", section.name
            if hasattr(value, "allow"):
                assert value.allow == LOOPBACK, section.name


async def test_audiosocket_rejects_and_logs_peers_outside_allow(tmp_path: Path) -> None:
    daemon = start_daemon(tmp_path, {"audiosocket": {"allow": ["10.0.0.0/8"]}})
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", daemon.audiosocket_port)
        writer.write(b"\x01\x00\x10" + uuid.uuid4().bytes + b"\x10\x01\x40" + bytes(320))
        async with asyncio.timeout(5):  # closed at once (reset: what we sent was never read), nothing sent back
            with contextlib.suppress(ConnectionResetError):
                assert await reader.read() == b""
        writer.close()
        await asyncio.sleep(0.3)
        assert daemon.events() == []
        assert "rejected connection from 127.0.0.1 (not in audiosocket.allow)" in daemon.stderr_path.read_text()
        _, body = daemon.get("/metrics", token=daemon.token)
        assert b'emovoice_audiosocket_errors_total{reason="rejected_peer"} 1.0' in body
    finally:
        stop_daemon(daemon)


async def test_rtp_from_an_unregistered_source_is_dropped_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    received: list[np.ndarray] = []
    receiver = RtpReceiver()
    host, port = await receiver.start("127.0.0.1", 0)
    try:
        packet = build_rtp(RtpPacket(payload_type=0, sequence=1, timestamp=160, ssrc=7, payload=bytes(160)))
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as stranger:
            stranger.bind(("127.0.0.1", 0))
            receiver.add_stream(("127.0.0.1", 1), "ulaw", received.append)  # some other, allowed source
            before = metrics.RTP_DROPPED.labels("unknown_source")._value.get()
            for _ in range(3):
                stranger.sendto(packet, (host, port))
            await asyncio.sleep(0.2)
            stranger_port = stranger.getsockname()[1]
        assert metrics.RTP_DROPPED.labels("unknown_source")._value.get() == before + 3
        assert received == []
        rejects = [r.getMessage() for r in caplog.records if "no call registered" in r.getMessage()]
        assert rejects == [f"RTP: dropped 1 datagram(s) from sources no call registered, latest from "
                           f"127.0.0.1:{stranger_port}"]  # one line, not one per datagram
    finally:
        await receiver.stop()


def test_secrets_come_from_environment_then_file_then_yaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "token").write_text("from-file\n")
    text = config_text(tmp_path, f"api: {{token: from-yaml, token_file: {tmp_path / 'token'}}}")
    monkeypatch.delenv("EMOVOICE_API_TOKEN", raising=False)
    assert Daemon(parse_config(text)).api_token == "from-file"
    monkeypatch.setenv("EMOVOICE_API_TOKEN", "from-env")
    assert Daemon(parse_config(text)).api_token == "from-env"
    monkeypatch.delenv("EMOVOICE_API_TOKEN")
    assert Daemon(parse_config(config_text(tmp_path))).api_token == TOKEN


def files_containing(root: Path, needles: list[bytes]) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and any(n in p.read_bytes() for n in needles)]


@pytest.mark.parametrize("record", [False, True])
async def test_call_audio_reaches_disk_only_with_record_audio(tmp_path: Path, speech_8k: np.ndarray,
                                                              record: bool) -> None:
    daemon = start_daemon(tmp_path, {"debug": {"record_audio": record, "record_dir": str(tmp_path / "rec")},
                                     "history": {"path": str(tmp_path / "history.sqlite3")}})
    try:
        call_id = str(uuid.uuid4())
        assert (await play_call("127.0.0.1", daemon.audiosocket_port, speech_8k, call_id, speed=4.0)).error == ""
        await asyncio.to_thread(daemon.wait_for, lambda ev: any(e["type"] == "call.ended" for e in ev))
        await asyncio.sleep(0.3)
    finally:
        stop_daemon(daemon)
    raw = speech_8k.astype("<i2").tobytes()
    needles = [raw[i:i + 320] for i in range(len(raw) // 4, len(raw) * 3 // 4, len(raw) // 8)]
    assert all(any(needle) for needle in needles)  # speech, not zeros
    found = files_containing(tmp_path, needles)
    if not record:
        assert found == []
        return
    assert [p.parent.name for p in found] == ["rec"] and found[0].suffix == ".wav"
    assert found[0].stat().st_mode & 0o777 == 0o600
    audio, rate = sf.read(found[0], dtype="int16")
    assert rate == 8000 and np.array_equal(audio, speech_8k)


MALFORMED_HTTP = {
    "100 KB header": b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n",
    "huge URL": b"GET /" + b"u" * 100_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    "garbage": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(200) + b"\r\n\r\n",
}


@pytest.mark.parametrize("request_bytes", MALFORMED_HTTP.values(), ids=MALFORMED_HTTP.keys())
async def test_a_malformed_http_request_logs_one_line_not_a_traceback(running: Daemon, request_bytes: bytes,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    host, port = running.api_address.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(request_bytes)
    with contextlib.suppress(ConnectionError):
        await writer.drain()
    reply = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    assert re.match(rb"HTTP/1.[01] 400 ", reply)
    records = [r for r in caplog.records if r.name.startswith(("aiohttp", "emovoice_daemon.outputs.api"))]
    assert all(r.levelno < 40 and r.exc_info is None for r in records), [r.getMessage() for r in records]
    assert len([r for r in records if r.levelno >= 30]) <= 1
    assert all(len(r.getMessage()) < 300 for r in records)
