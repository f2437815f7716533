"""``python -m services.watcher`` / ``nodemesh-watcher``."""

from __future__ import annotations

from nodemesh.runtime import service_main
from services.watcher.app import main as app_main
from services.watcher.config import WatcherConfig


def main() -> None:
    service_main("watcher", WatcherConfig, app_main, description="nodemesh Kubernetes watcher")


if __name__ == "__main__":
    main()
