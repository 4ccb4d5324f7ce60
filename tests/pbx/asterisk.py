"""A private, real Asterisk for tests: installed from ../shared, configured from the repo's snippets.

``ensure_installed()`` unpacks ``../shared/asterisk/dist/asterisk-*.tar.xz`` to /opt/asterisk when it
is not there yet (``./dev test`` does the same up front) and skips only when ../shared is absent.
``Asterisk`` writes its own config dir (directories, modules, loopback listeners on free ports),
adds the files a test gives (``snippet()`` reads the repo's ``asterisk/*.conf`` verbatim, so the
shipped snippets are what is tested), runs ``asterisk -f`` until fully booted and stops it.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, TypeVar

from tests.conftest import REPO, free_port, shared_path

PREFIX = Path("/opt/asterisk")
BINARY = PREFIX / "sbin" / "asterisk"
SNIPPETS = REPO / "asterisk"
BOOT_TIMEOUT_S = 60.0
RTP_PORTS = 200
AMI_USER, AMI_SECRET = "emovoice", "ami-test-secret"
# config files Asterisk complains about when absent; empty is enough (queues.conf: app_queue loads)
EMPTY_FILES = ("cdr.conf", "cel.conf", "features.conf", "confbridge.conf", "udptl.conf", "acl.conf", "ccss.conf",
               "res_parking.conf", "musiconhold.conf", "queuerules.conf", "indications.conf", "pjsip_wizard.conf",
               "pjsip_notify.conf", "pjproject.conf", "followme.conf", "websocket_client.conf", "queues.conf",
               "pjsip.conf", "ari.conf", "extensions.conf")
T = TypeVar("T")


def ensure_installed() -> Path:
    """/opt/asterisk/sbin/asterisk, unpacked from the shared tarball the first time (idempotent)."""
    if BINARY.exists():
        return BINARY
    tarballs = sorted(shared_path("asterisk", "dist").glob("asterisk-*.tar.xz"))
    if not tarballs:
        raise AssertionError("../shared/asterisk/dist holds no asterisk-*.tar.xz")
    subprocess.run(["tar", "-C", "/", "-xJf", str(tarballs[-1])], check=True)
    return BINARY


def snippet(name: str, replace: dict[str, str] | None = None) -> str:
    """The repo's ``asterisk/<name>`` as shipped, with each ``replace`` key (which must occur) swapped."""
    text = (SNIPPETS / name).read_text()
    for old, new in (replace or {}).items():
        if old not in text:
            raise AssertionError(f"asterisk/{name} no longer contains {old!r}; update the test")
        text = text.replace(old, new)
    return text


def free_udp_block(size: int) -> tuple[int, int]:
    """``size`` consecutive UDP ports on 127.0.0.1 that are free now (one instance's RTP range)."""
    for _ in range(100):
        start = free_port(socket.SOCK_DGRAM) & ~1
        socks: list[socket.socket] = []
        try:
            for port in range(start, start + size):
                socks.append(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
                socks[-1].bind(("127.0.0.1", port))
            return start, start + size - 1
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise AssertionError(f"no {size} consecutive free UDP ports on 127.0.0.1")


@dataclass
class Asterisk:
    """One private Asterisk on loopback: its ports, its config dir, its process."""

    root: Path
    sip_port: int = field(default_factory=lambda: free_port(socket.SOCK_DGRAM))
    http_port: int = field(default_factory=free_port)
    ami_port: int = field(default_factory=free_port)
    rtp_ports: tuple[int, int] = field(default_factory=lambda: free_udp_block(RTP_PORTS))
    proc: subprocess.Popen[bytes] | None = None

    @property
    def config_file(self) -> Path:
        return self.root / "etc" / "asterisk.conf"

    @property
    def console_path(self) -> Path:
        return self.root / "console.log"

    def pjsip_conf(self, extra: str = "") -> str:
        """The shipped pjsip.conf, its UDP transport bound to this instance's SIP port, plus ``extra``."""
        return snippet("pjsip.conf", {"bind = 127.0.0.1:5060": f"bind = 127.0.0.1:{self.sip_port}"}) + extra

    def base_config(self) -> dict[str, str]:
        """Files every instance gets: private directories, all modules, loopback listeners, an AMI user."""
        dirs = {"astetcdir": "etc", "astvarlibdir": "lib", "astdbdir": "lib", "astkeydir": "lib",
                "astcachedir": "lib", "astspooldir": "spool", "astrundir": "run", "astlogdir": "log"}
        lines = [f"{key} => {self.root / sub}" for key, sub in dirs.items()]
        lines += [f"astmoddir => {PREFIX}/lib/asterisk/modules", f"astdatadir => {PREFIX}/var/lib/asterisk"]
        files = dict.fromkeys(EMPTY_FILES, "")
        files.update({
            "asterisk.conf": "[directories]\n" + "\n".join(lines) + "\n[options]\nverbose = 3\nnocolor = yes\n",
            "modules.conf": "[modules]\nautoload = yes\nnoload = res_statsd.so\nnoload = res_chan_stats.so\n",
            "logger.conf": "[logfiles]\nconsole => notice,warning,error,verbose\n",
            "rtp.conf": f"[general]\nrtpstart = {self.rtp_ports[0]}\nrtpend = {self.rtp_ports[1]}\n",
            "http.conf": f"[general]\nenabled = yes\nbindaddr = 127.0.0.1\nbindport = {self.http_port}\n",
            "manager.conf": (f"[general]\nenabled = yes\nbindaddr = 127.0.0.1\nport = {self.ami_port}\n\n"
                             f"[{AMI_USER}]\nsecret = {AMI_SECRET}\npermit = 127.0.0.1/255.255.255.255\n"
                             "read = all\nwrite = all\n"),
        })
        return files

    def start(self, files: dict[str, str]) -> "Asterisk":
        """Write the base config plus ``files`` (name -> text; they win), run ``asterisk -f``, wait until booted."""
        binary = ensure_installed()
        for sub in ("etc", "lib/keys", "spool", "run", "log"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        for name, text in {**self.base_config(), **files}.items():
            (self.root / "etc" / name).write_text(text)
        self.proc = subprocess.Popen([str(binary), "-C", str(self.config_file), "-f"], stdin=subprocess.DEVNULL,
                                     stdout=open(self.console_path, "wb"), stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self.wait(lambda: self._exited() or "fully booted" in self.cli("core waitfullybooted").lower(),
                  "asterisk fully booted", BOOT_TIMEOUT_S)
        return self

    def _exited(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"asterisk exited {self.proc.returncode}:\n{self.console()[-3000:]}")
        return False

    def cli(self, command: str, timeout: float = 30.0) -> str:
        """One CLI command over the control socket; its output ('' while the socket is not up)."""
        out = subprocess.run([str(BINARY), "-C", str(self.config_file), "-rx", command],
                             capture_output=True, text=True, timeout=timeout)
        return out.stdout if out.returncode == 0 else ""

    def console(self) -> str:
        return self.console_path.read_text(errors="replace") if self.console_path.exists() else ""

    def channels(self) -> list[str]:
        """Names of the live channels."""
        return [line.split("!")[0] for line in self.cli("core show channels concise").splitlines() if "!" in line]

    def variable(self, channel_prefix: str, name: str) -> str:
        """A variable of the first live channel whose name starts with ``channel_prefix`` ('' if none)."""
        channel = next((c for c in self.channels() if c.startswith(channel_prefix)), None)
        lines = self.cli(f"core show channel {channel}").splitlines() if channel else []
        return next((line.split("=", 1)[1] for line in lines if line.strip().startswith(f"{name}=")), "")

    def wait(self, predicate: Callable[[], T], what: str, timeout: float = 30.0) -> T:
        """Poll ``predicate()`` until truthy; fail with the console's tail if it never is."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(0.2)
        raise AssertionError(f"{what}: not within {timeout:.0f} s; asterisk console:\n{self.console()[-4000:]}")

    def stop(self) -> None:
        """``core stop now``; the process group is killed if it is still there 15 s later."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.cli("core stop now", timeout=10)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
