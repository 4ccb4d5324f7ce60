"""End to end: the real daemon with its SIP endpoint enabled, called by a real SIPp UAC."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from tests.conftest import start_daemon, stop_daemon

from .sipp import free_udp_port, run_sipp_call, write_rtp_pcap


def test_sipp_call_produces_started_score_and_ended_events(tmp_path: Path, speech_8k: np.ndarray) -> None:
    sipp_port, sip_port, rtp_port = free_udp_port(), free_udp_port(), free_udp_port()
    daemon = start_daemon(tmp_path, {"audiosocket": {"enabled": False},
                                     "sip": {"enabled": True, "port": sip_port, "server": f"127.0.0.1:{sipp_port}",
                                             "register": False, "rtp_port_low": rtp_port,
                                             "rtp_port_high": rtp_port}})
    try:
        pcap = write_rtp_pcap(tmp_path / "speech.pcap", speech_8k)
        duration_ms = 1000 * len(speech_8k) // 8000 + 500
        result = run_sipp_call(tmp_path, sip_port, sipp_port, pcap, duration_ms)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
        events = daemon.wait_for(lambda evs: any(e["type"] == "call.ended" for e in evs))
    finally:
        stop_daemon(daemon)
    by_type = {t: [e for e in events if e["type"] == t] for t in ("call.started", "score", "call.ended")}
    (started,), (ended,) = by_type["call.started"], by_type["call.ended"]
    assert started["source"] == "sip" and started["role"] == "customer"
    assert started["meta"]["caller"] == "5551234" and started["meta"]["codec"] == "ulaw"
    assert ended["reason"] == "hangup" and ended["call_id"] == started["call_id"]
    assert ended["summary"]["duration_s"] >= len(speech_8k) // 160 * 0.02 - 0.01
    assert by_type["score"] and all(e["call_id"] == started["call_id"] for e in by_type["score"])
