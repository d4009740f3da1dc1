"""Admin commands: dataset create/list, token list/revoke, ledger export (SQLite; PostgreSQL too)."""

from __future__ import annotations

import json
import os
import uuid
from datetime import UTC, datetime

import numpy as np
import psycopg
import pytest
from sqlalchemy import create_engine, func, select
from sqlalchemy.engine import make_url
from typer.testing import CliRunner

from app.auth import Principal
from app.db import create_db_engine, make_session_factory
from app.ledger import quanta
from app.models import ApiToken, Dataset, LedgerEntry
from app.schemas import NoiseSpec, Role, RunCreate
from app.services.admission import admit_run
from app.services.charging import charge_unit, finish_run
from app.settings import Settings, get_settings

ADMIN = Principal(token_id=0, name="test", role=Role.admin, datasets=frozenset())


def _postgres_url() -> str | None:
    url = os.environ.get("DATABASE_URL")
    return url if url and url.startswith("postgresql") else None


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'cli.db'}"
        return
    base = _postgres_url()
    if base is None:
        pytest.skip("PostgreSQL tests need DATABASE_URL=postgresql+psycopg://...")
    schema = f"t_{uuid.uuid4().hex[:16]}"
    conninfo = make_url(base).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield (
            make_url(base)
            .update_query_dict({"options": f"-csearch_path={schema}"})
            .render_as_string(hide_password=False)
        )
    finally:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.fixture
def sqlite_url(tmp_path):
    return f"sqlite:///{tmp_path / 'cli.db'}"


def _cli_for(url, monkeypatch, *, create: bool = True):
    monkeypatch.setenv("DPLEDGER_DATABASE_URL", url)
    get_settings.cache_clear()
    from dpledger.cli import cli as root  # the root maps errors to exit codes

    def invoke(*args: str):
        return CliRunner().invoke(root, list(args))

    if create:
        assert invoke("db", "upgrade").exit_code == 0  # admin commands never create a database
    return invoke


@pytest.fixture
def cli(sqlite_url, monkeypatch):
    yield _cli_for(sqlite_url, monkeypatch), sqlite_url
    get_settings.cache_clear()


@pytest.fixture
def cli_any(database_url, monkeypatch):
    yield _cli_for(database_url, monkeypatch), database_url
    get_settings.cache_clear()


def count(url: str, model) -> int:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return int(conn.scalar(select(func.count()).select_from(model)) or 0)
    finally:
        engine.dispose()


def fail_line(result) -> str:
    """The one line a failing command prints on stderr (and nothing on stdout)."""
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


def make_ledger(url: str, dataset: str = "mnist") -> None:
    """A plan run with 2 charged epochs then finished, and a refused run."""
    engine = create_db_engine(Settings(database_url=url))
    try:
        factory = make_session_factory(engine)
        body = RunCreate(
            dataset=dataset,
            name="r1",
            sample_rate=0.004,
            epochs=4,
            noise=NoiseSpec(noise_multiplier=1.0),
        )
        with factory() as session:
            run = admit_run(session, body, ADMIN, dry_run=False)
        for epoch in range(2):
            charge_unit(engine, run.id, epoch, ADMIN)
        with factory() as session:
            finish_run(session, run.id, ADMIN)
    finally:
        engine.dispose()


# --- datasets ---------------------------------------------------------------------------------


def test_dataset_create_then_list(cli_any):
    invoke, url = cli_any
    created = invoke(
        "dataset", "create", "--name", "mnist", "--target-epsilon", "3", "--target-delta", "1e-5",
        "--description", "digits", "--json",
    )  # fmt: skip
    assert created.exit_code == 0, created.output
    assert json.loads(created.stdout)["name"] == "mnist"
    assert invoke("dataset", "create", "--name", "cifar", "--target-epsilon", "8",
                  "--target-delta", "1e-6").exit_code == 0  # fmt: skip
    listed = invoke("dataset", "list", "--json")
    assert listed.exit_code == 0, listed.output
    rows = json.loads(listed.stdout)
    assert [r["name"] for r in rows] == ["cifar", "mnist"]
    mnist = rows[1]
    assert mnist["description"] == "digits" and mnist["target_delta"] == 1e-5
    assert mnist["epsilon_spent"] == 0 and mnist["epsilon_remaining"] == 3.0
    table = invoke("dataset", "list").stdout.splitlines()
    assert table[0].split() == [
        "name", "target_epsilon", "target_delta", "spent", "reserved", "remaining",
    ]  # fmt: skip
    assert table[2].split()[:2] == ["mnist", "3"]
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            assert conn.scalar(select(Dataset.created_by).where(Dataset.name == "mnist")) == (
                "admin:cli"
            )
    finally:
        engine.dispose()


def test_dataset_list_shows_what_was_spent(cli):
    invoke, url = cli
    invoke(
        "dataset", "create", "--name", "mnist", "--target-epsilon", "3", "--target-delta", "1e-5"
    )
    make_ledger(url)
    (row,) = json.loads(invoke("dataset", "list", "--json").stdout)
    # The run is finished: nothing stays reserved on top of what was spent.
    assert row["epsilon_spent"] > 0 and row["epsilon_reserved"] == 0.0
    assert row["epsilon_remaining"] == pytest.approx(3.0 - row["epsilon_spent"])


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--name", "Bad Name", "--target-epsilon", "3", "--target-delta", "1e-5"], "invalid name"),
        (["--name", "ok", "--target-epsilon", "-1", "--target-delta", "1e-5"], "target_epsilon"),
        (["--name", "ok", "--target-epsilon", "nan", "--target-delta", "1e-5"], "target_epsilon"),
        (["--name", "ok", "--target-epsilon", "3", "--target-delta", "1"], "target_delta"),
    ],
)
def test_dataset_create_refuses_bad_input_and_writes_nothing(cli, args, expected):
    invoke, url = cli
    assert invoke("db", "upgrade").exit_code == 0
    line = fail_line(invoke("dataset", "create", *args))
    assert expected in line
    assert count(url, Dataset) == 0


def test_dataset_create_refuses_a_duplicate(cli):
    invoke, url = cli
    args = [
        "dataset",
        "create",
        "--name",
        "mnist",
        "--target-epsilon",
        "3",
        "--target-delta",
        "1e-5",
    ]
    assert invoke(*args).exit_code == 0
    assert "dataset_exists" in fail_line(invoke(*args))
    assert count(url, Dataset) == 1


# --- tokens -----------------------------------------------------------------------------------


def test_token_list_and_revoke(cli):
    invoke, url = cli
    assert invoke("dataset", "create", "--name", "mnist", "--target-epsilon", "3",
                  "--target-delta", "1e-5").exit_code == 0  # fmt: skip
    viewer = json.loads(
        invoke("token", "create", "--role", "viewer", "--name", "grafana", "--json").stdout
    )
    trainer = json.loads(
        invoke("token", "create", "--role", "trainer", "--dataset", "mnist", "--json").stdout
    )
    listed = invoke("token", "list", "--json")
    assert listed.exit_code == 0, listed.output
    tokens = json.loads(listed.stdout)
    assert [(t["id"], t["name"], t["role"], t["datasets"], t["revoked_at"]) for t in tokens] == [
        (viewer["id"], "grafana", "viewer", [], None),
        (trainer["id"], "cli", "trainer", ["mnist"], None),
    ]
    text = invoke("token", "list").stdout
    assert "grafana" in text and viewer["token"] not in text and trainer["token"] not in text
    revoked = invoke("token", "revoke", str(viewer["id"]))
    assert revoked.exit_code == 0, revoked.output
    assert "revoked token" in revoked.stdout
    after = json.loads(invoke("token", "list", "--json").stdout)
    assert [(t["id"], t["revoked_at"] is not None) for t in after] == [
        (viewer["id"], True),
        (trainer["id"], False),
    ]
    # Revoking again changes nothing; an unknown id is not_found.
    assert invoke("token", "revoke", str(viewer["id"])).exit_code == 0
    assert "not_found" in fail_line(invoke("token", "revoke", "999"))
    assert count(url, ApiToken) == 2  # the revoked token's hash is kept, so it stays revoked


def test_token_list_never_prints_raw_control_characters(cli):
    """Names are refused with control characters; rows written by other means are escaped."""
    invoke, url = cli
    for name in ("a\x1bb", "rtl\u202eexe", "nul\x00", "new\nline", "c1\x9b"):
        assert "refused character" in fail_line(
            invoke("token", "create", "--role", "viewer", "--name", name)
        )
    assert count(url, ApiToken) == 0
    engine = create_engine(url)
    try:
        with engine.begin() as conn:  # e.g. a row from before names were checked
            conn.execute(
                ApiToken.__table__.insert().values(
                    token_hash="0" * 64,
                    name="x\x1b[31m\u202egnp.exe\x00",
                    role="viewer",
                    datasets=[],
                    created_at=datetime.now(UTC),
                )
            )
    finally:
        engine.dispose()
    listed = invoke("token", "list")
    assert listed.exit_code == 0, listed.output
    assert not any(ch in listed.stdout for ch in "\x1b\u202e\x00")
    assert "\\x1b[31m\\u202egnp.exe\\x00" in listed.stdout
    as_json = invoke("token", "list", "--json").stdout
    assert not any(ch in as_json for ch in "\x1b\u202e\x00")
    assert json.loads(as_json)[-1]["name"] == "x\x1b[31m\u202egnp.exe\x00"


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.mark.anyio
async def test_a_revoked_token_is_refused_by_the_service(cli):
    import httpx

    from app.main import create_app

    invoke, url = cli
    created = json.loads(invoke("token", "create", "--role", "viewer", "--json").stdout)
    app = create_app(Settings(database_url=url))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        headers = {"Authorization": f"Bearer {created['token']}"}
        async with httpx.AsyncClient(
            transport=transport, base_url="http://t", headers=headers
        ) as http:
            assert (await http.get("/v1/datasets")).status_code == 200
            assert invoke("token", "revoke", str(created["id"])).exit_code == 0
            refused = await http.get("/v1/datasets")
    assert refused.status_code == 401 and refused.json()["code"] == "unauthorized"


# --- ledger export ----------------------------------------------------------------------------


def test_ledger_export_writes_every_entry_in_id_order(cli_any, tmp_path):
    invoke, url = cli_any
    invoke(
        "dataset", "create", "--name", "mnist", "--target-epsilon", "3", "--target-delta", "1e-5"
    )
    invoke(
        "dataset", "create", "--name", "other", "--target-epsilon", "3", "--target-delta", "1e-5"
    )
    make_ledger(url)
    make_ledger(url, "other")
    output = tmp_path / "audit.jsonl"
    result = invoke("ledger", "export", "--dataset", "mnist", "--output", str(output))
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in output.read_text().splitlines()]
    assert [line["kind"] for line in lines] == ["reservation", "charge", "charge", "release"]
    assert [line["epoch"] for line in lines] == [None, 0, 1, None]
    ids = [line["id"] for line in lines]
    assert ids == sorted(ids)
    assert {line["dataset"] for line in lines} == {"mnist"}
    assert {line["run_name"] for line in lines} == {"r1"}
    for line in lines:
        assert len(line["rdp"]) == len(line["orders"]) == 12
        assert isinstance(line["mechanism"], dict) and line["mechanism"]
        assert line["actor"] == "admin:test" and line["created_at"]
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            dataset = conn.execute(select(Dataset).where(Dataset.name == "mnist")).one()
            stored = conn.scalar(
                select(func.count())
                .select_from(LedgerEntry)
                .where(LedgerEntry.dataset_id == dataset.id)
            )
    finally:
        engine.dispose()
    assert stored == len(lines)
    by_kind = {
        kind: np.sum([line["rdp"] for line in lines if line["kind"] == kind], axis=0)
        for kind in ("reservation", "charge", "release")
    }
    committed = quanta.to_floats_up(dataset.rdp_committed)
    np.testing.assert_allclose(by_kind["charge"], committed, rtol=1e-12)
    np.testing.assert_allclose(
        by_kind["reservation"] - by_kind["release"],
        quanta.to_floats_up(dataset.rdp_reserved),
        rtol=1e-9,
    )
    to_stdout = invoke("ledger", "export", "--dataset", "mnist")
    assert [json.loads(line) for line in to_stdout.stdout.splitlines()] == lines


def test_ledger_export_of_an_unknown_dataset_writes_nothing(cli, tmp_path):
    invoke, _ = cli
    output = tmp_path / "audit.jsonl"
    assert "not_found" in fail_line(
        invoke("ledger", "export", "--dataset", "nope", "--output", str(output))
    )
    assert not output.exists()
    assert list(tmp_path.glob(".audit.jsonl.*")) == []
    output.write_text("previous export\n")
    assert "not_found" in fail_line(
        invoke("ledger", "export", "--dataset", "nope", "--output", str(output))
    )
    assert output.read_text() == "previous export\n"
    assert "not_found" in fail_line(invoke("ledger", "export", "--dataset", "nope"))
    missing_dir = tmp_path / "no" / "such" / "audit.jsonl"
    invoke(
        "dataset", "create", "--name", "mnist", "--target-epsilon", "3", "--target-delta", "1e-5"
    )
    assert "does not exist" in fail_line(
        invoke("ledger", "export", "--dataset", "mnist", "--output", str(missing_dir))
    )


def test_ledger_export_streams_in_batches(cli, tmp_path, monkeypatch):
    """More entries than one batch: all exported, in order."""
    from app.services import ledger_export

    monkeypatch.setattr(ledger_export, "BATCH_SIZE", 2)
    invoke, url = cli
    invoke(
        "dataset", "create", "--name", "mnist", "--target-epsilon", "30", "--target-delta", "1e-5"
    )
    for _ in range(3):
        make_ledger(url)
    lines = invoke("ledger", "export", "--dataset", "mnist").stdout.splitlines()
    ids = [json.loads(line)["id"] for line in lines]
    assert len(ids) == 12 and ids == sorted(ids)


def test_unreachable_database_is_one_line(monkeypatch, tmp_path):
    invoke = _cli_for(f"sqlite:///{tmp_path / 'no' / 'dir' / 'x.db'}", monkeypatch, create=False)
    try:
        assert fail_line(invoke("dataset", "list")).startswith("error: no dpledger database here")
    finally:
        get_settings.cache_clear()
