"""Sealed Notes service: Flask API, key release, store and Vault adapter.

`create_app` is imported lazily so that `import service` (e.g. by the CLI) does
not import prometheus_client before the CLI has configured multiprocess metrics.
"""

from typing import Any

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from service.app import create_app

        return create_app
    raise AttributeError(name)
