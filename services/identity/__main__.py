"""``python -m services.identity``: security identities, the ipcache and the SPIFFE CA."""

from __future__ import annotations

from nodemesh.runtime import service_main

from .app import main as app_main
from .config import IdentityConfig


def main() -> None:
    service_main(
        "identity", IdentityConfig, app_main, description="nodemesh identities, ipcache and SPIFFE CA"
    )


if __name__ == "__main__":
    main()
