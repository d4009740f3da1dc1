"""Service commands: ``db upgrade`` and ``token create`` (``serve`` runs in the server tests)."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import create_engine, inspect, select
from typer.testing import CliRunner

from app.auth import hash_token
from app.models import ApiToken
from app.settings import get_settings


@pytest.fixture
def cli(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    monkeypatch.setenv("DPLEDGER_DATABASE_URL", url)
    get_settings.cache_clear()
    from dpledger.cli import cli as root  # the root maps errors to exit codes

    yield root, url
    get_settings.cache_clear()


def test_db_upgrade_creates_the_tables(cli):
    root, url = cli
    result = CliRunner().invoke(root, ["db", "upgrade"])
    assert result.exit_code == 0, result.output
    engine = create_engine(url)
    try:
        tables = set(inspect(engine).get_table_names())
    finally:
        engine.dispose()
    assert {"datasets", "runs", "ledger_entries", "api_tokens", "alembic_version"} <= tables


def make_database_with_datasets(root, *names: str) -> None:
    assert CliRunner().invoke(root, ["db", "upgrade"]).exit_code == 0
    for name in names:
        args = [
            "dataset",
            "create",
            "--name",
            name,
            "--target-epsilon",
            "3",
            "--target-delta",
            "1e-5",
        ]
        result = CliRunner().invoke(root, args)
        assert result.exit_code == 0, result.output


def test_admin_commands_never_create_a_database(cli, tmp_path):
    root, _ = cli
    for args in (["token", "list"], ["dataset", "list"], ["token", "create", "--role", "viewer"]):
        result = CliRunner().invoke(root, args)
        assert result.exit_code == 2, result.output
        assert result.stdout == ""
        (line,) = result.stderr.splitlines()
        assert line.startswith("error: no dpledger database here")
        assert str(tmp_path / "cli.db") in line  # names the database it looked for
    assert not (tmp_path / "cli.db").exists()


def test_admin_commands_name_their_database(cli, tmp_path):
    root, _ = cli
    make_database_with_datasets(root)
    result = CliRunner().invoke(root, ["token", "list"])
    assert result.exit_code == 0, result.output
    assert result.stderr.splitlines() == [f"database: sqlite:///{tmp_path / 'cli.db'}"]


def test_token_create_refuses_datasets_that_do_not_exist(cli):
    root, url = cli
    make_database_with_datasets(root, "mnist")
    args = ["token", "create", "--role", "trainer", "--dataset", "mnist", "--dataset", "later"]
    result = CliRunner().invoke(root, args)
    assert result.exit_code == 2
    (line,) = result.stderr.splitlines()
    assert "no dataset named later" in line
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            assert conn.execute(select(ApiToken.id)).all() == []
    finally:
        engine.dispose()


def test_token_create_prints_a_token_stored_hashed(cli):
    root, url = cli
    make_database_with_datasets(root, "mnist", "cifar")
    result = CliRunner().invoke(
        root,
        [
            "token",
            "create",
            "--role",
            "trainer",
            "--dataset",
            "mnist",
            "--dataset",
            "cifar",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    created = json.loads(result.stdout)
    assert created["role"] == "trainer" and created["datasets"] == ["cifar", "mnist"]
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(select(ApiToken.token_hash, ApiToken.role)).all()
    finally:
        engine.dispose()
    assert rows == [(hash_token(created["token"]), "trainer")]


def test_token_create_refuses_unknown_role(cli):
    root, _ = cli
    result = CliRunner().invoke(root, ["token", "create", "--role", "root"])
    assert result.exit_code == 2
    assert "role" in result.output
