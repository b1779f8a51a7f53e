"""The service catalogue: what a plan promises and how it is verified."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class VerifyMode(StrEnum):
    NONE = "none"  # active once the configuration is applied
    DOWNLOAD = "download"  # TR-143 DownloadDiagnostics
    DOWNLOAD_UPLOAD = "download_upload"  # DownloadDiagnostics, then UploadDiagnostics


@dataclass(frozen=True, slots=True)
class Plan:
    id: str
    name: str
    down_mbps: float
    up_mbps: float
    vlan: int | None = None
    verify: VerifyMode = VerifyMode.DOWNLOAD

    def as_dict(self) -> dict[str, object]:
        return {
            "id": self.id,
            "name": self.name,
            "down_mbps": self.down_mbps,
            "up_mbps": self.up_mbps,
            "vlan": self.vlan,
            "verify": self.verify.value,
        }
