"""The baseline: a UDP server that sends every datagram back, with the DNS server's socket loop
(``loop.add_reader``, up to 64 datagrams per wake-up) and nothing else — the cost of the path itself.

``python -m bench.dns.echo HOST PORT``
"""

from __future__ import annotations

import asyncio
import signal
import socket
import sys


def main() -> None:
    host, port = sys.argv[1], int(sys.argv[2])
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind((host, port))
    sock.setblocking(False)

    def ready() -> None:
        for _ in range(64):
            try:
                data, addr = sock.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                return
            try:
                sock.sendto(data, addr)
            except OSError:
                pass

    async def run() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_reader(sock.fileno(), ready)
        print("ready", flush=True)
        await stop.wait()

    asyncio.run(run())


if __name__ == "__main__":
    main()
