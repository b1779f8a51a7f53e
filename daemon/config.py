"""Settings: the only reader of config files and environment variables.

One TOML file, validated by pydantic-settings, with `TURNUP_<SECTION>__<KEY>`
environment overrides (`TURNUP_API__TOKEN=...`). Read once at start and passed
down; nothing deeper in the daemon reads files or the environment for config.
`config/turnup.example.toml` documents every key.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from daemon.core.plans import Plan, VerifyMode


class ConfigError(Exception):
    """A config file that cannot be used; the message says where and why."""


class _Section(BaseModel):
    model_config = {"extra": "forbid"}


class StoreSettings(_Section):
    url: str = "sqlite+aiosqlite:///var/lib/turnup/turnup.db"
    pool_size: int = Field(10, ge=1, le=200)
    # Routine sightings (nothing to decide) write last_seen in one batch this often.
    sighting_flush_seconds: float = Field(1.0, gt=0, le=60)
    # How long this daemon trusts what it knows about a device between
    # transactions; bounds staleness when several daemons share PostgreSQL.
    device_cache_seconds: float = Field(300.0, ge=0)
    device_cache_entries: int = Field(200_000, ge=0)

    @field_validator("url")
    @classmethod
    def _supported(cls, v: str) -> str:
        if not v.startswith(("sqlite+aiosqlite://", "postgresql+asyncpg://")):
            raise ValueError("use sqlite+aiosqlite:///path or postgresql+asyncpg://user@host/db")
        return v


class ApiSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    token: str = Field("", description="bearer token for the control API")
    metrics_public: bool = Field(False, description="serve /metrics without the token")

    @field_validator("token")
    @classmethod
    def _strong(cls, v: str) -> str:
        if v and len(v) < 16:
            raise ValueError("the API token must be at least 16 characters")
        return v


class AcsSettings(_Section):
    host: str = "0.0.0.0"
    port: int = Field(7547, ge=0, le=65535)
    path: str = "/acs"
    public_url: str = Field("", description="URL CPEs use to reach the ACS")
    auth: Literal["digest", "basic", "any"] = "any"
    realm: str = "turnup"
    trust_management_network: bool = False
    shared_username: str = ""
    shared_password: str = ""
    credentials: dict[str, str] = Field(default_factory=dict)  # username (serial) -> password
    max_body_bytes: int = Field(262_144, ge=1024)
    max_sessions: int = Field(10_000, ge=1)
    session_timeout_seconds: float = Field(60.0, gt=0)
    connection_request_username: str = "turnup"
    connection_request_password: str = ""
    connection_request_timeout_seconds: float = Field(5.0, gt=0)
    max_connection_requests_in_flight: int = Field(64, ge=1)
    periodic_inform_interval: int = Field(3600, ge=30)
    http_server: Literal["builtin", "uvicorn"] = "builtin"
    keepalive_timeout_seconds: float = Field(30.0, gt=0)
    max_connections: int = Field(20_000, ge=1)
    inform_memo_entries: int = Field(20_000, ge=0)

    @model_validator(mode="after")
    def _auth_possible(self) -> AcsSettings:
        self.require_credentials()
        return self

    def require_credentials(self) -> None:
        # A shared username with an empty password is allowed on purpose: real
        # CPEs send Basic auth with an empty password (see the README).
        if not self.trust_management_network and not (self.credentials or self.shared_username):
            raise ValueError(
                "no CPE credentials: set acs.shared_username/shared_password or "
                "[acs.credentials], or acs.trust_management_network = true for a closed network"
            )


class SpeedtestSettings(_Section):
    enabled: bool = True
    host: str = "0.0.0.0"
    port: int = Field(7548, ge=0, le=65535)
    public_url: str = Field("", description="base URL CPEs use to reach the speed-test server")
    external_download_url: str = ""
    external_upload_url: str = ""
    download_bytes: int = Field(4_000_000, ge=1024)
    upload_bytes: int = Field(2_000_000, ge=1024)
    max_bytes: int = Field(1_000_000_000, ge=1024)
    max_transfers: int = Field(512, ge=1)


class VerificationSettings(_Section):
    pass_fraction: float = Field(0.9, gt=0, le=1.5)
    max_test_attempts: int = Field(3, ge=1, le=100)
    retry_delay_seconds: float = Field(300, ge=0)
    step_timeout_seconds: float = Field(600, gt=0)
    max_config_attempts: int = Field(3, ge=1)
    timer_interval_seconds: float = Field(1.0, gt=0)


DEFAULT_SCHEDULE: list[float] = [0, 5, 300, 1800, 7200, 18000, 36000, 36000, 86400, 86400, 86400]


class WebhookSettings(_Section):
    url: str = ""
    secret: str = ""
    schedule_seconds: list[float] = Field(default_factory=lambda: list(DEFAULT_SCHEDULE))
    timeout_seconds: float = Field(10.0, gt=0)
    concurrency: int = Field(16, ge=1, le=1000)
    batch: int = Field(100, ge=1)
    poll_interval_seconds: float = Field(0.5, gt=0)

    @model_validator(mode="after")
    def _secret_with_url(self) -> WebhookSettings:
        if self.url and not self.secret.startswith("whsec_"):
            raise ValueError("webhooks.secret must be a Standard Webhooks secret (whsec_...)")
        return self


class PlanSettings(_Section):
    id: str = Field(min_length=1, max_length=64)
    name: str
    down_mbps: float = Field(gt=0)
    up_mbps: float = Field(gt=0)
    vlan: int | None = Field(None, ge=1, le=4094)
    verify: VerifyMode = VerifyMode.DOWNLOAD

    def to_plan(self) -> Plan:
        return Plan(self.id, self.name, self.down_mbps, self.up_mbps, self.vlan, self.verify)


class LoggingSettings(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    json_output: bool = Field(False, alias="json")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="TURNUP_",
        env_nested_delimiter="__",
        extra="forbid",
    )

    store: StoreSettings = Field(default_factory=StoreSettings)
    api: ApiSettings = Field(default_factory=ApiSettings)
    # Unvalidated default: a config without an [acs] section then fails in
    # `_acs_secure` with a clear message instead of running an open ACS.
    acs: AcsSettings = Field(default_factory=AcsSettings.model_construct)
    speedtest: SpeedtestSettings = Field(default_factory=SpeedtestSettings)
    verification: VerificationSettings = Field(default_factory=VerificationSettings)
    webhooks: WebhookSettings = Field(default_factory=WebhookSettings)
    plans: list[PlanSettings] = Field(default_factory=list)
    profiles_dir: str = Field("", description="extra vendor profiles (TOML), beside the built-in")
    logging: LoggingSettings = Field(default_factory=LoggingSettings)

    @model_validator(mode="after")
    def _acs_secure(self) -> Settings:
        self.acs.require_credentials()
        return self

    @model_validator(mode="after")
    def _unique_plans(self) -> Settings:
        seen: set[str] = set()
        for plan in self.plans:
            if plan.id in seen:
                raise ValueError(f"plan id {plan.id!r} appears twice")
            seen.add(plan.id)
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_file = settings_cls.model_config.get("toml_file")
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if toml_file:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml_file))
        return tuple(sources)


_HEADER = re.compile(r"^\s*\[\[?([^\]]+)\]\]?\s*(?:#.*)?$")


def _line_of(text: str, loc: tuple[Any, ...]) -> int | None:
    """Best effort: the line where the failing key sits, for a located error.

    Finds the deepest `[table]` header naming a prefix of the key path (the
    n-th `[[array]]` header for `plans.n.key`), then the key inside that table.
    """
    keys = [str(p) for p in loc if isinstance(p, str)]
    if not keys:
        return None
    lines = text.splitlines()
    headers: list[tuple[int, str]] = []
    for i, line in enumerate(lines):
        m = _HEADER.match(line)
        if m:
            headers.append((i, ".".join(part.strip().strip("\"'") for part in m[1].split("."))))
    index = loc[1] if len(loc) > 1 and isinstance(loc[1], int) else 0
    start, end, table = 0, len(lines), None
    for depth in range(len(keys), 0, -1):
        name = ".".join(keys[:depth])
        found = [i for i, h in headers if h == name]
        if not found:
            continue
        start = found[index] if depth == 1 and index < len(found) else found[0]
        if depth == len(keys):
            return start + 1  # the problem is the table as a whole
        end = next((i for i, _ in headers if i > start), len(lines))
        table = start + 1
        break
    for i in range(start, end):
        head = lines[i].split("=", 1)[0].strip().strip("\"'")
        if head in (keys[-1], ".".join(keys)):
            return i + 1
    return table


def load_settings(path: str | Path | None, **overrides: Any) -> Settings:
    """Read, validate and return the settings. Raises ConfigError with the file,
    line and key of every problem."""
    if path is None:
        try:
            return Settings(**overrides)
        except ValidationError as exc:
            raise ConfigError(_format(exc, "<environment>", "")) from None
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{file}: cannot read: {exc.strerror}") from None
    try:
        tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{file}: not valid TOML: {exc}") from None

    class BoundSettings(Settings):
        model_config = SettingsConfigDict(**{**Settings.model_config, "toml_file": file})

    try:
        settings: Settings = BoundSettings(**overrides)
    except ValidationError as exc:
        raise ConfigError(_format(exc, str(file), text)) from None
    return settings


def _format(exc: ValidationError, where: str, text: str) -> str:
    lines = [f"{where}: {exc.error_count()} problem(s)"]
    for err in exc.errors():
        loc = tuple(err["loc"])
        key = ".".join(str(p) for p in loc) or "(top level)"
        line = _line_of(text, loc) if text else None
        at = f"line {line}: " if line else ""
        value = err.get("input")
        shown = "" if isinstance(value, dict | list) or value is None else f" (got {value!r})"
        lines.append(f"  {at}{key}: {err['msg']}{shown}")
    return "\n".join(lines)
