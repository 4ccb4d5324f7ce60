"""RTP loss under load: N concurrent ARI calls (snoop + ExternalMedia, both directions) on a real Asterisk.

    .venv/bin/python -m bench.bench_ari_rtp --calls 20                     # rtp.receive_buffer_bytes default
    .venv/bin/python -m bench.bench_ari_rtp --calls 20 --receive-buffer 0  # the kernel's default buffer

A private Asterisk 22 (tests/pbx/asterisk.py) answers ``--calls`` SIPp calls at once, sends each into
Stasis(emovoice) and then Echo(), so the daemon (a subprocess) receives 2 RTP streams per call on its
one RTP socket while it scores 2 legs per call. Prints what the kernel dropped: the RTP socket's own
``drops`` (/proc/net/udp, exact) and the host-wide ``Udp RcvbufErrors`` delta (/proc/net/snmp: other
processes' UDP counts too), with the daemon's packet counters and the buffer the kernel granted.
Exit status 1 if the RTP socket dropped anything.
"""
from __future__ import annotations

import argparse
import os
import re
import socket
import tempfile
import time
from pathlib import Path

import numpy as np

from emovoice_daemon.tools.demo import ANGRY_CLIPS, compose
from tests.conftest import DaemonProcess, free_port, running, start_daemon
from tests.pbx.asterisk import Asterisk, snippet
from tests.pbx.phones import caller_phone, endpoints

SECRET = "bench-secret"
DIALPLAN = "[bench]\nexten => 100,1,Answer()\n same => n,Stasis(emovoice)\n same => n,Echo()\n"


def udp_rcvbuf_errors() -> int:
    """Host-wide ``Udp: RcvbufErrors`` from /proc/net/snmp."""
    head, values = [line.split() for line in Path("/proc/net/snmp").read_text().splitlines() if line.startswith("Udp:")]
    return int(values[head.index("RcvbufErrors")])


def socket_drops(port: int) -> int:
    """The ``drops`` column of the UDP socket bound to 127.0.0.1:``port`` (/proc/net/udp)."""
    local = f"0100007F:{port:04X}"
    for line in Path("/proc/net/udp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == local:
            return int(fields[-1])
    raise RuntimeError(f"no UDP socket on 127.0.0.1:{port}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (/proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def metric(daemon: DaemonProcess, name: str) -> float:
    """One unlabelled counter from the daemon's /metrics."""
    text = daemon.get("/metrics", daemon.token)[1].decode()
    found = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--seconds", type=int, default=30, help="length of each call")
    parser.add_argument("--format", default="ulaw", choices=("ulaw", "alaw", "slin16"), help="ari.format")
    parser.add_argument("--receive-buffer", type=int, default=None,
                        help="rtp.receive_buffer_bytes (default: the daemon's default; 0: the kernel's)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-ari-rtp-") as tmp:
        work = Path(tmp)
        speech, _ = compose(ANGRY_CLIPS)  # the demo's CREMA-D caller
        voice = np.tile(speech, args.seconds * 8000 // len(speech) + 1)[:args.seconds * 8000]
        asterisk = Asterisk(work / "asterisk")
        try:
            asterisk.start({"ari.conf": snippet("ari.conf", {"change-me-to-a-long-random-secret": SECRET}),
                            "extensions.conf": DIALPLAN, "pjsip.conf": asterisk.pjsip_conf(endpoints("bench", {}))})
            rtp_port = free_port(socket.SOCK_DGRAM)
            rtp = {"port": rtp_port} | ({} if args.receive_buffer is None
                                        else {"receive_buffer_bytes": args.receive_buffer})
            (work / "daemon").mkdir()
            daemon = start_daemon(work / "daemon", {
                "audiosocket": {"enabled": False}, "rtp": rtp, "engine": {"max_lag_s": 30.0},
                "ari": {"enabled": True, "url": f"http://127.0.0.1:{asterisk.http_port}/ari", "password": SECRET, "format": args.format}})
            with running(daemon):
                granted = re.search(r"kernel granted (\d+)", (work / "daemon" / "daemon.stderr").read_text())
                host_before, drops_before = udp_rcvbuf_errors(), socket_drops(rtp_port)
                cpu_before = cpu_seconds(daemon.proc.pid)
                started = time.monotonic()
                callers = caller_phone(work / "sipp", asterisk.sip_port, "100", voice, calls=args.calls)
                timeline = []  # (seconds since the calls started, socket drops so far)
                while callers.proc.poll() is None and time.monotonic() - started < args.seconds + 180:
                    time.sleep(1.0)
                    timeline.append((time.monotonic() - started, socket_drops(rtp_port) - drops_before))
                status = callers.wait(10)
                failures = callers.log()
                elapsed = time.monotonic() - started
                cpu = cpu_seconds(daemon.proc.pid) - cpu_before
                drops = socket_drops(rtp_port) - drops_before
                host = udp_rcvbuf_errors() - host_before
                packets = metric(daemon, "emovoice_rtp_packets_total")
                lost = metric(daemon, "emovoice_rtp_packets_lost_total")
        finally:
            asterisk.stop()
    print(f"{args.calls} concurrent ARI calls x {args.seconds} s (2 {args.format} RTP streams each), sipp exit "
          f"{status}, {elapsed:.0f} s; host load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"RTP socket receive buffer: {granted.group(1) + ' bytes granted' if granted else 'kernel default'}"
          f" (net.core.rmem_max = {Path('/proc/sys/net/core/rmem_max').read_text().strip()})")
    print(f"RTP socket drops (/proc/net/udp): {drops}; when (s after the calls started: drops so far): "
          + (", ".join(f"{t:.0f}: {n}" for (t, n), (_, m) in zip(timeline, [(0, 0), *timeline]) if n != m) or "-"))
    print(f"host Udp RcvbufErrors delta (/proc/net/snmp, all processes): {host}")
    print(f"daemon: {packets:.0f} RTP packets accepted, {lost:.0f} concealed as lost, "
          f"{cpu:.1f} CPU-s used in {elapsed:.0f} s")
    if status != 0:
        print(failures)
    return 1 if drops else 0


if __name__ == "__main__":
    raise SystemExit(main())
