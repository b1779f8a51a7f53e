"""`turnup` commands: check-config, db upgrade, and run's refusal without a token."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from daemon.cli import main

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "config" / "turnup.example.toml"
BAD = '[api]\nhost = "127.0.0.1"\nport = "eighty"\n\n[acs]\ntrust_management_network = true\n'


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith("TURNUP_"):
            monkeypatch.delenv(name)


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.upper().startswith("TURNUP_")}


def _tables(db: Path) -> set[str]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    return {name for (name,) in rows}


# ---- check-config ------------------------------------------------------------------


def test_check_config_accepts_the_example(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", str(EXAMPLE)]) == 0
    out = capsys.readouterr().out
    assert f"{EXAMPLE}: OK" in out
    assert "fiber-300, fiber-1000" in out


def test_check_config_warns_about_an_empty_token(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "t.toml"
    path.write_text("[acs]\ntrust_management_network = true\n")
    assert main(["check-config", str(path)]) == 0
    captured = capsys.readouterr()
    assert "OK" in captured.out
    assert "api.token is empty" in captured.err


def test_check_config_exit_2_with_located_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(BAD)
    with pytest.raises(SystemExit) as info:
        main(["check-config", str(path)])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "bad config" in err
    assert str(path) in err
    assert "line 3: api.port" in err


def test_check_config_as_a_real_process(tmp_path: Path) -> None:
    good = subprocess.run(
        [sys.executable, "-m", "daemon", "check-config", str(EXAMPLE)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=_env(),
        timeout=60,
    )
    assert good.returncode == 0, good.stderr
    assert "OK" in good.stdout

    path = tmp_path / "bad.toml"
    path.write_text(BAD)
    bad = subprocess.run(
        [sys.executable, "-m", "daemon", "check-config", str(path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=_env(),
        timeout=60,
    )
    assert bad.returncode == 2
    assert f"{path}" in bad.stderr
    assert "line 3: api.port" in bad.stderr
    assert "Traceback" not in bad.stderr


# ---- db upgrade --------------------------------------------------------------------


def test_db_upgrade_creates_the_schema_and_is_idempotent(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "turnup.db"
    url = f"sqlite+aiosqlite:///{db}"
    assert main(["db", "upgrade", "--url", url]) == 0
    assert "latest schema" in capsys.readouterr().out
    tables = _tables(db)
    assert {"orders", "devices", "outbox", "alembic_version"} <= tables
    with sqlite3.connect(db) as conn:
        (version,) = conn.execute("SELECT version_num FROM alembic_version").fetchone()

    assert main(["db", "upgrade", "--url", url]) == 0
    assert _tables(db) == tables
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchall() == [(version,)]


def test_db_upgrade_from_a_config_file(tmp_path: Path) -> None:
    db = tmp_path / "from-config.db"
    path = tmp_path / "t.toml"
    path.write_text(
        f'[store]\nurl = "sqlite+aiosqlite:///{db}"\n\n[acs]\ntrust_management_network = true\n'
    )
    assert main(["db", "upgrade", "--config", str(path)]) == 0
    assert {"orders", "devices", "outbox", "alembic_version"} <= _tables(db)


def test_db_upgrade_refuses_an_unsupported_url(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["db", "upgrade", "--url", "mysql://turnup@db/turnup"]) == 2
    err = capsys.readouterr().err
    assert "--url" in err and "sqlite+aiosqlite" in err


# ---- run ---------------------------------------------------------------------------


def test_run_refuses_an_empty_token(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "never.db"
    path = tmp_path / "t.toml"
    path.write_text(
        f'[store]\nurl = "sqlite+aiosqlite:///{db}"\n\n[api]\ntoken = ""\n\n'
        "[acs]\ntrust_management_network = true\n"
    )
    assert main(["run", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "api.token is empty" in err
    assert "TURNUP_API__TOKEN" in err
    assert not db.exists()  # refused before touching anything


def test_run_with_a_bad_config_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(BAD)
    with pytest.raises(SystemExit) as info:
        main(["run", "--config", str(path)])
    assert info.value.code == 2
    assert "line 3: api.port" in capsys.readouterr().err
