"""emovoice-top in a real terminal (tmux) against a daemon subprocess with simulated calls:
rows appear, the angry call is highlighted as ALERT and sorted first, keys re-sort, it
reconnects after the daemon restarts, and ``q`` quits."""
from __future__ import annotations

import asyncio
import sys
import time
import uuid
from pathlib import Path

from emovoice_daemon.tools.simulate import play_call
from tests.conftest import free_port, stop_daemon

from tests.support.scripted_daemon import start_scripted_daemon
from tests.support.scripted import tone_call
from tests.support.tmux import Tmux

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"


def row_order(screen: str, call_ids: list[str]) -> list[str]:
    lines = screen.splitlines()
    first = {c: next(i for i, line in enumerate(lines) if c[:8] in line) for c in call_ids}
    return sorted(call_ids, key=first.__getitem__)


async def test_emovoice_top_in_tmux(tmp_path: Path) -> None:
    ports = {"audiosocket": {"port": free_port()}, "api": {"port": free_port()}}
    as_port, api_port = ports["audiosocket"]["port"], ports["api"]["port"]
    for run in ("run1", "run2"):
        (tmp_path / run).mkdir()
    daemon = start_scripted_daemon(tmp_path / "run1", ports)
    term = Tmux(["env", "-u", "COLUMNS", "-u", "LINES", sys.executable, "-m", "emovoice_daemon.tools.top", "--url", f"http://127.0.0.1:{api_port}",
                 "--token", daemon.token, "--refresh", "0.2"])
    try:
        await term.wait_for(lambda s: "● connected" in s)
        calm_id, angry_id = "aaaaaaaa-0000-4000-8000-000000000001", "bbbbbbbb-0000-4000-8000-000000000002"
        calls = [asyncio.create_task(play_call("127.0.0.1", as_port, tone_call([("calm", 40)]), calm_id)),
                 asyncio.create_task(play_call("127.0.0.1", as_port, tone_call([("calm", 4), ("angry", 36)]),
                                               angry_id))]
        screen = await term.wait_for(lambda s: "ALERT" in s and calm_id[:8] in s)
        assert row_order(screen, [calm_id, angry_id]) == [angry_id, calm_id]  # state sort: alerts first
        assert "NEGATIVE 0." in screen and "NEUTRAL 0." in screen and "legs 2" in screen
        (ARTIFACTS / "emovoice_top_alert.txt").parent.mkdir(exist_ok=True)
        (ARTIFACTS / "emovoice_top_alert.txt").write_text(screen)
        term.keys("c")
        screen = await term.wait_for(lambda s: "[c] call id ◀" in s)
        assert row_order(screen, [calm_id, angry_id]) == [calm_id, angry_id]

        for task in calls:
            task.cancel()
        stop_daemon(daemon)
        await term.wait_for(lambda s: "● connected" not in s and "retrying" in s)
        daemon = start_scripted_daemon(tmp_path / "run2", ports)
        await term.wait_for(lambda s: "● connected" in s)
        third = str(uuid.uuid4())
        call = asyncio.create_task(play_call("127.0.0.1", as_port, tone_call([("calm", 6)]), third))
        await term.wait_for(lambda s: third[:8] in s and "NEUTRAL" in s)
        call.cancel()
        term.keys("q")
        await term.wait_for(lambda s: True)
        deadline = time.monotonic() + 10
        while not term.exited() and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        assert term.exited()
    finally:
        term.kill()
        stop_daemon(daemon)
