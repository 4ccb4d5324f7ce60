"""Real ``nats-server`` processes for the JetStream tests: one node, or a cluster of nodes on loopback."""
from __future__ import annotations

import asyncio
import json
import shutil
import signal
import subprocess
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import nats
import pytest

from tests.conftest import free_port


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Poll ``predicate`` until it holds; fail saying ``what`` did not happen."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(what)


@dataclass
class NatsNode:
    """One nats-server with JetStream on loopback: client, cluster and monitoring ports."""

    name: str
    store: Path
    port: int = field(default_factory=free_port)
    cluster_port: int = field(default_factory=free_port)
    monitor_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self, routes: list[str] | None = None, cluster: str = "") -> None:
        if not shutil.which("nats-server"):
            pytest.skip("nats-server is needed (./dev test installs it)")
        args = ["nats-server", "-n", self.name, "-a", "127.0.0.1", "-p", str(self.port), "-m", str(self.monitor_port),
                "-js", "-sd", str(self.store)]
        if cluster:
            args += ["--cluster_name", cluster, "--cluster", f"nats://127.0.0.1:{self.cluster_port}",
                     "--routes", ",".join(routes or [])]
        log = open(self.store.with_suffix(".log"), "ab")
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        wait_until(lambda: self.monitor("varz") is not None, f"{self.name} never answered /varz")

    def monitor(self, path: str) -> dict | None:
        """A monitoring endpoint's JSON (``varz``, ``connz``, ``jsz``...), None when it does not answer."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.monitor_port}/{path}", timeout=2) as resp:
                return json.loads(resp.read())
        except (OSError, ValueError):
            return None

    def client_names(self) -> list[str]:
        return [c.get("name", "") for c in (self.monitor("connz") or {}).get("connections", [])]

    def kill(self) -> None:
        """SIGKILL: the node dies as in a crash (no goodbye to clients or peers)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()



class NatsCluster:
    """``size`` JetStream nodes routed to each other on loopback, waiting until they elect a meta leader."""

    def __init__(self, tmp_path: Path, size: int = 3) -> None:
        self.nodes = [NatsNode(f"n{i + 1}", tmp_path / f"nats-n{i + 1}") for i in range(size)]
        routes = [f"nats://127.0.0.1:{n.cluster_port}" for n in self.nodes]
        try:
            for node in self.nodes:
                node.start(routes, cluster="emovoice-test")
            wait_until(self._has_leader, "the JetStream cluster never elected a meta leader", 60)
        except BaseException:
            self.stop()
            raise

    def _has_leader(self) -> bool:
        meta = [(n.monitor("jsz") or {}).get("meta_cluster", {}) for n in self.nodes]
        return all(m.get("leader") and m.get("cluster_size") == len(self.nodes) for m in meta)

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    def node_of(self, client_name: str) -> NatsNode:
        """The node a named client connection is attached to."""
        return next(n for n in self.nodes if client_name in n.client_names())

    def stream_leader(self, stream: str) -> str | None:
        """The name of the node leading ``stream`` (as the live nodes report it), or None."""
        for node in self.nodes:
            for account in (node.monitor("jsz?accounts=true&streams=true") or {}).get("account_details", []):
                for detail in account.get("stream_detail", []):
                    if detail["name"] == stream and detail.get("cluster", {}).get("leader"):
                        return detail["cluster"]["leader"]
        return None

    async def lead(self, stream: str, name: str) -> None:
        """Ask the stream's leader to step down until node ``name`` leads it."""
        nc = await nats.connect(self.urls)
        try:
            for _ in range(30):
                leader = self.stream_leader(stream)
                if leader == name:
                    return
                if leader is not None:
                    await nc.request(f"$JS.API.STREAM.LEADER.STEPDOWN.{stream}", b"", timeout=5)
                await asyncio.sleep(1.0)
            raise AssertionError(f"{name} never became the leader of {stream}")
        finally:
            await nc.close()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


async def ids_in_stream(servers: list[str], stream: str) -> Counter[str]:
    """How many times each ``Nats-Msg-Id`` is stored in ``stream``: the stream itself, no reader's de-duplication."""
    nc = await nats.connect(servers)
    try:
        js = nc.jetstream()
        state = (await js.stream_info(stream)).state
        ids: Counter[str] = Counter()
        for seq in range(state.first_seq, state.last_seq + 1):
            msg = await js.get_msg(stream, seq)
            ids[(msg.headers or {}).get("Nats-Msg-Id", f"no id at {seq}")] += 1
        return ids
    finally:
        await nc.close()
