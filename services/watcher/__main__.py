"""``python -m services.watcher`` / ``nodemesh-watcher``."""

from __future__ import annotations

from nodemesh.leanimports import without_nats_websocket


def main() -> None:
    without_nats_websocket()  # before anything imports nats
    from nodemesh.runtime import service_main
    from services.watcher.app import main as app_main
    from services.watcher.config import WatcherConfig

    service_main("watcher", WatcherConfig, app_main, description="nodemesh Kubernetes watcher")


if __name__ == "__main__":
    main()
