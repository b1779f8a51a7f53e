"""The control API (FastAPI): orders, plans, devices, CWMP tasks, events, webhooks."""

from daemon.api.routes import create_api

__all__ = ["create_api"]
