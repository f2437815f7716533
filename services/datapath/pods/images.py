"""Local mode runs a pod's container as a process in the pod's network namespace.

There is no container runtime, so an image is mapped to a command line that behaves like it. An image
not in the map runs its ``command``/``args`` as given (they must exist on the host). The map can be
extended with ``$NODEMESH_IMAGE_MAP`` (a JSON file: image prefix → argv list) so upstream manifests
(e.g. the Gateway API conformance suite's echo-basic) apply unchanged.
"""

from __future__ import annotations

import json
import os
import sys

__all__ = ["DEFAULT_IMAGES", "image_command"]

_PY = sys.executable

# image prefix (tag and digest ignored) → argv of the stand-in
DEFAULT_IMAGES: dict[str, list[str]] = {
    "gcr.io/k8s-staging-gateway-api/echo-basic": [_PY, "-m", "echoserver.echo"],
    "registry.k8s.io/gateway-api/echo-basic": [_PY, "-m", "echoserver.echo"],
    "gcr.io/k8s-staging-gateway-api/echo-advanced": [_PY, "-m", "echoserver.echo"],
    "nodemesh/echo": [_PY, "-m", "echoserver.echo"],
}


def _strip(image: str) -> str:
    image = image.split("@", 1)[0]
    last = image.rsplit("/", 1)[-1]
    if ":" in last:
        image = image[: len(image) - len(last)] + last.split(":", 1)[0]
    return image


def image_command(image: str, command: list[str], args: list[str]) -> list[str]:
    """The argv to run for a container: the image's stand-in (plus args), or command + args."""
    table = dict(DEFAULT_IMAGES)
    extra = os.environ.get("NODEMESH_IMAGE_MAP")
    if extra:
        with open(extra) as fh:
            table.update(json.load(fh))
    base = table.get(_strip(image))
    if base is not None and not command:
        return [*base, *args]
    return [*command, *args]
