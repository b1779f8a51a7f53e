"""Settings: the example validates, defaults, env overrides, located errors."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from daemon.config import ConfigError, Settings, load_settings
from daemon.core.plans import VerifyMode

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "turnup.example.toml"
TOKEN = "0123456789abcdef-token"
OK_ACS = "[acs]\ntrust_management_network = true\n"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith("TURNUP_"):
            monkeypatch.delenv(name)


def write(tmp_path: Path, text: str, name: str = "turnup.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def error_of(path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    return str(info.value)


# ---- good files ------------------------------------------------------------------


def test_example_config_validates() -> None:
    s = load_settings(EXAMPLE)
    assert s.api.host == "127.0.0.1"
    assert len(s.api.token) >= 16
    assert s.acs.shared_username == "cpe"
    assert s.acs.credentials == {"ALCL1A2B3C4D": "example-device-password"}
    assert s.webhooks.secret.startswith("whsec_")
    assert s.logging.json_output is False
    assert [p.id for p in s.plans] == ["fiber-300", "fiber-1000"]
    plan = s.plans[0].to_plan()
    assert (plan.down_mbps, plan.up_mbps, plan.vlan) == (300, 100, 100)
    assert plan.verify is VerifyMode.DOWNLOAD_UPLOAD


def test_no_acs_section_is_not_an_open_acs() -> None:
    with pytest.raises(ConfigError, match="no CPE credentials"):
        load_settings(None)


def test_defaults_without_a_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TURNUP_ACS__SHARED_USERNAME", "cpe")
    s = load_settings(None)
    assert s == Settings()
    assert s.store.url.startswith("sqlite+aiosqlite://")
    assert (s.api.host, s.api.port, s.api.token) == ("127.0.0.1", 8080, "")
    assert s.api.metrics_public is False
    assert (s.acs.port, s.acs.path, s.acs.auth) == (7547, "/acs", "any")
    assert s.speedtest.enabled and s.speedtest.port == 7548
    assert s.webhooks.url == "" and s.webhooks.schedule_seconds[0] == 0
    assert s.plans == []
    assert s.logging.level == "info"


def test_defaults_fill_a_minimal_file(tmp_path: Path) -> None:
    s = load_settings(write(tmp_path, f'[api]\ntoken = "{TOKEN}"\n\n{OK_ACS}'))
    assert s.api.token == TOKEN
    assert s.api.port == 8080
    assert s.acs.max_body_bytes == 262_144
    assert s.verification.pass_fraction == 0.9


def test_env_overrides_win_over_the_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TURNUP_API__TOKEN", "from-the-environment-0123")
    monkeypatch.setenv("TURNUP_STORE__URL", "postgresql+asyncpg://turnup@db/turnup")
    s = load_settings(EXAMPLE)
    assert s.api.token == "from-the-environment-0123"
    assert s.store.url == "postgresql+asyncpg://turnup@db/turnup"
    # the rest of each section still comes from the file
    assert s.api.host == "127.0.0.1"
    assert s.store.pool_size == 10
    assert s.acs.public_url == "http://acs.mgmt.example.net:7547/acs"


def test_bad_env_value_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TURNUP_API__TOKEN", "short")
    with pytest.raises(ConfigError, match=r"api\.token"):
        load_settings(EXAMPLE)


# ---- located errors --------------------------------------------------------------


def test_bad_type_names_file_line_and_key(tmp_path: Path) -> None:
    path = write(
        tmp_path, f'[api]\nhost = "127.0.0.1"\nport = "eighty"\ntoken = "{TOKEN}"\n\n{OK_ACS}'
    )
    msg = error_of(path)
    assert str(path) in msg
    assert "line 3: api.port" in msg
    assert "'eighty'" in msg


def test_key_in_the_right_section_is_located(tmp_path: Path) -> None:
    # `port` appears first under [acs]; the error is about [api]'s.
    text = '[acs]\ntrust_management_network = true\nport = 7547\n\n[api]\nport = "x"\n'
    assert "line 6: api.port" in error_of(write(tmp_path, text))


def test_error_in_second_plan_points_at_that_plan(tmp_path: Path) -> None:
    plan = '[[plans]]\nid = "{id}"\nname = "P"\ndown_mbps = {down}\nup_mbps = 1\n\n'
    text = OK_ACS + "\n" + plan.format(id="a", down=1) + plan.format(id="b", down=-1)
    # line 1-2 [acs], 3 blank, 4-8 plan a, 9 blank, 10 [[plans]], ..., 13 down_mbps = -1
    assert "line 13: plans.1.down_mbps" in error_of(write(tmp_path, text))


def test_toml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, '[api]\nhost = "127.0.0.1"\nport = = 80\n')
    msg = error_of(path)
    assert str(path) in msg
    assert "not valid TOML" in msg
    assert "line 3" in msg


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    msg = error_of(path)
    assert str(path) in msg and "cannot read" in msg


def test_unknown_key_is_rejected_by_name(tmp_path: Path) -> None:
    path = write(tmp_path, f"[api]\nport = 80\ntokn = 'x'\n\n{OK_ACS}")
    msg = error_of(path)
    assert "line 3: api.tokn" in msg
    assert "Extra inputs are not permitted" in msg


def test_unknown_section_is_rejected(tmp_path: Path) -> None:
    assert "dhcpp" in error_of(write(tmp_path, f"{OK_ACS}\n[dhcpp]\nport = 67\n"))


def test_duplicate_plan_ids(tmp_path: Path) -> None:
    plan = '[[plans]]\nid = "fiber"\nname = "{name}"\ndown_mbps = 10\nup_mbps = 1\n\n'
    text = OK_ACS + plan.format(name="A") + plan.format(name="B")
    msg = error_of(write(tmp_path, text))
    assert "'fiber'" in msg and "twice" in msg


def test_webhook_url_needs_whsec_secret(tmp_path: Path) -> None:
    text = f'{OK_ACS}\n[webhooks]\nurl = "https://billing.example/hook"\nsecret = "plain"\n'
    msg = error_of(write(tmp_path, text))
    assert "webhooks" in msg and "whsec_" in msg
    ok = text.replace('"plain"', '"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"')
    assert load_settings(write(tmp_path, ok)).webhooks.url == "https://billing.example/hook"


def test_short_api_token(tmp_path: Path) -> None:
    msg = error_of(write(tmp_path, f'[api]\ntoken = "short"\n\n{OK_ACS}'))
    assert "line 2: api.token" in msg
    assert "16 characters" in msg


@pytest.mark.parametrize(
    "url", ["mysql://turnup@db/turnup", "sqlite:///var/lib/turnup.db", "postgresql://u@h/db"]
)
def test_unsupported_store_url(tmp_path: Path, url: str) -> None:
    msg = error_of(write(tmp_path, f'[store]\nurl = "{url}"\n\n{OK_ACS}'))
    assert "line 2: store.url" in msg
    assert "sqlite+aiosqlite" in msg and "postgresql+asyncpg" in msg


@pytest.mark.parametrize(
    "url", ["sqlite+aiosqlite:////var/lib/turnup/t.db", "postgresql+asyncpg://u@h:5432/db"]
)
def test_supported_store_urls(tmp_path: Path, url: str) -> None:
    assert load_settings(write(tmp_path, f'[store]\nurl = "{url}"\n\n{OK_ACS}')).store.url == url


def test_acs_without_cpe_credentials_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, '[api]\nport = 8080\n\n[acs]\nport = 7547\nrealm = "turnup"\n')
    msg = error_of(path)
    assert str(path) in msg
    assert "line 4: acs" in msg
    assert "no CPE credentials" in msg
    assert "trust_management_network" in msg


@pytest.mark.parametrize(
    "acs",
    [
        "trust_management_network = true\n",
        'shared_username = "cpe"\nshared_password = "pw"\n',
        '[acs.credentials]\n"ALCL1A2B3C4D" = "pw"\n',
    ],
)
def test_any_cpe_credential_source_is_enough(tmp_path: Path, acs: str) -> None:
    load_settings(write(tmp_path, f"[acs]\n{acs}"))


def test_every_problem_is_listed(tmp_path: Path) -> None:
    text = '[api]\nport = 70000\ntoken = "short"\n\n[acs]\nport = -1\n'
    msg = error_of(write(tmp_path, text))
    assert "line 2: api.port" in msg
    assert "line 3: api.token" in msg
    assert "line 6: acs.port" in msg
