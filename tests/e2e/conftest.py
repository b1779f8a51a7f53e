"""End-to-end fixtures: a real daemon on loopback, a billing receiver, an API client."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from emulators.billing_receiver import BillingReceiver, running_receiver
from emulators.scenarios.harness import LabConfig, Running, daemon_in_process


class Lab:
    def __init__(self, config: LabConfig, receiver: BillingReceiver, running: Running) -> None:
        self.config = config
        self.receiver = receiver
        self.running = running


@pytest.fixture
async def lab(tmp_path: Path, store_url_e2e: str) -> AsyncIterator[Lab]:
    config = LabConfig(workdir=tmp_path, store_url=store_url_e2e)
    receiver = BillingReceiver(config.webhook_secret)
    async with running_receiver(receiver) as url:
        config.webhook_url = url
        async with daemon_in_process(config) as running:
            yield Lab(config, receiver, running)


@pytest.fixture
def store_url_e2e(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'turnup.db'}"
