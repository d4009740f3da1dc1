"""Structured logs: JSON lines, request ids from header to every record, admission decisions."""

from __future__ import annotations

import io
import json
import logging

import httpx
import pytest

from app.logging_config import (
    JsonFormatter,
    configure_logging,
    log_fields,
    make_handler,
    record_fields,
    request_id_var,
)
from app.settings import Settings
from tests.integration.conftest import ADMIN_TOKEN, auth, make_dataset, run_body
from tests.integration.server import Server

pytestmark = pytest.mark.anyio

DECISION_FIELDS = {
    "event",
    "decision",
    "dry_run",
    "dataset",
    "run",
    "run_id",
    "actor",
    "kind",
    "sample_rate",
    "steps_per_epoch",
    "max_grad_norm",
    "max_records_per_individual",
    "privacy_unit",
    "epochs",
    "noise",
    "reservation",
    "epsilon_projected",
    "epsilon_remaining",
    "target_epsilon",
    "order",
}


@pytest.fixture
def json_log():
    """The service's JSON handler on the ``dpledger`` loggers, writing into a buffer."""
    stream = io.StringIO()
    handler = make_handler(Settings(log_format="json"), stream)
    logger = logging.getLogger("dpledger")
    previous = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)


def decisions(caplog) -> list[dict]:
    return [
        dict(record_fields(r))
        for r in caplog.records
        if record_fields(r).get("event") == "admission"
    ]


async def test_every_line_is_json_with_the_request_id_of_its_request(client, json_log):
    await make_dataset(client)
    response = await client.post("/v1/runs", json=run_body(), headers={"X-Request-ID": "req-42"})
    assert response.status_code == 201
    assert response.headers["X-Request-ID"] == "req-42"
    lines = json_log()
    assert lines, "nothing was logged"
    for line in lines:
        assert {"ts", "level", "logger", "message", "request_id"} <= set(line)
    mine = [line for line in lines if line["request_id"] == "req-42"]
    # The decision is logged from the worker thread running the route: the id followed it there.
    assert {line.get("event") for line in mine} == {"admission", "request"}
    request = next(line for line in mine if line["event"] == "request")
    assert request["method"] == "POST" and request["route"] == "/v1/runs"
    assert request["status"] == 201 and request["duration_ms"] > 0


async def test_a_request_id_is_generated_when_missing_or_unsafe(client, json_log):
    plain = await client.get("/v1/datasets")
    generated = plain.headers["X-Request-ID"]
    assert (
        len(generated) == 32
        and generated != (await client.get("/v1/datasets")).headers["X-Request-ID"]
    )
    hostile = await client.get("/v1/datasets", headers={"X-Request-ID": 'x" , "level": "ERROR'})
    assert hostile.headers["X-Request-ID"] != 'x" , "level": "ERROR'
    too_long = await client.get("/v1/datasets", headers={"X-Request-ID": "a" * 129})
    assert too_long.headers["X-Request-ID"] != "a" * 129
    ids = {line["request_id"] for line in json_log() if line.get("event") == "request"}
    assert generated in ids and hostile.headers["X-Request-ID"] in ids
    # Errors answered by the framework carry the id too.
    missing = await client.get("/nowhere", headers={"X-Request-ID": "lost-1"})
    assert missing.status_code == 404 and missing.headers["X-Request-ID"] == "lost-1"
    assert request_id_var.get() is None  # nothing leaks out of the request


async def test_admission_decisions_are_logged_with_their_inputs(client, caplog):
    caplog.set_level(logging.INFO, logger="dpledger")
    await make_dataset(client, target_epsilon=3.0)
    admitted = (await client.post("/v1/runs", json=run_body(name="small", epochs=2))).json()
    preview = await client.post("/v1/runs", params={"dry_run": True}, json=run_body(name="dry"))
    refused = await client.post("/v1/runs", json=run_body(name="huge", epochs=500))
    assert preview.status_code == 200 and refused.status_code == 409
    admit, dry, refuse = decisions(caplog)
    for logged in (admit, dry, refuse):
        assert set(logged) == DECISION_FIELDS
        assert logged["dataset"] == "mnist" and logged["actor"] == "admin:bootstrap"
        assert logged["sample_rate"] == 0.004 and logged["steps_per_epoch"] == 250
        assert logged["noise"] == {
            "schedule": "constant",
            "noise_multiplier": 1.0,
            "decay_rate": 0.0,
        }
        assert logged["target_epsilon"] == 3.0
        assert logged["max_records_per_individual"] == 1  # the group size K (default 1)
    assert admit["decision"] == "admit" and admit["run"] == "small"
    assert admit["epochs"] == 2 and admit["run_id"] == admitted["id"] and not admit["dry_run"]
    assert admit["order"] in (1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 12.0, 16.0, 32.0, 64.0)
    assert admit["epsilon_remaining"] == pytest.approx(3.0)
    assert dry["decision"] == "admit" and dry["dry_run"] and dry["run_id"] is None
    assert dry["epsilon_projected"] == pytest.approx(preview.json()["epsilon_projected"])
    assert refuse["decision"] == "refuse" and refuse["order"] is None
    assert refuse["run_id"] == refused.json()["run_id"] and refuse["epochs"] == 500
    assert refuse["epsilon_projected"] == pytest.approx(refused.json()["epsilon_projected"])
    assert refuse["epsilon_projected"] > 3.0
    assert refuse["epsilon_remaining"] == pytest.approx(refused.json()["epsilon_remaining"])


async def test_charges_are_logged_and_tokens_never_are(client, caplog):
    caplog.set_level(logging.DEBUG)
    await make_dataset(client)
    created = (
        await client.post(
            "/v1/tokens", json={"name": "t", "role": "trainer", "datasets": ["mnist"]}
        )
    ).json()
    trainer = created["token"]
    run = (await client.post("/v1/runs", json=run_body(epochs=2), headers=auth(trainer))).json()
    await client.post(f"/v1/runs/{run['id']}/epochs", json={"epoch": 0}, headers=auth(trainer))
    await client.get("/metrics", headers=auth("dpl_wrong_token"))
    charges = [
        record_fields(r) for r in caplog.records if record_fields(r).get("event") == "charge"
    ]
    assert len(charges) == 1
    assert charges[0]["run_id"] == run["id"] and charges[0]["epoch"] == 0
    assert charges[0]["dataset"] == "mnist" and charges[0]["actor"] == "trainer:t"
    assert isinstance(charges[0]["ledger_entry_id"], int)
    formatter = JsonFormatter()
    text = "\n".join(formatter.format(r) for r in caplog.records)
    for secret in (ADMIN_TOKEN, trainer, "dpl_wrong_token"):
        assert secret not in text


def test_json_formatter_structure():
    record = logging.LogRecord(
        "dpledger.x", logging.WARNING, __file__, 1, "hello %s", ("you",), None
    )
    record.fields = {"event": "e", "epsilon": float("inf"), "level": "shadowed", "nested": [1.5]}
    token = request_id_var.set("rid-1")
    try:
        handler = make_handler(Settings(log_format="json"), io.StringIO())
        handler.filter(record)
    finally:
        request_id_var.reset(token)
    line = json.loads(JsonFormatter().format(record))
    assert line["level"] == "WARNING" and line["logger"] == "dpledger.x"
    assert line["message"] == "hello you" and line["request_id"] == "rid-1"
    assert line["event"] == "e" and line["epsilon"] == "inf" and line["nested"] == [1.5]
    assert line["field_level"] == "shadowed"
    assert line["ts"].endswith("+00:00")


def test_configure_logging_level_format_and_idempotence():
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    stream = io.StringIO()
    try:
        configure_logging(Settings(log_level="warning", log_format="text"), io.StringIO())
        handler = configure_logging(Settings(log_level="warning", log_format="text"), stream)
        ours = [h for h in root.handlers if h.get_name() == handler.get_name()]
        assert ours == [handler] and root.level == logging.WARNING
        logging.getLogger("dpledger.test").info("hidden")
        logging.getLogger("uvicorn.error").warning("shown %d", 1, extra=log_fields(k="v"))
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    text = stream.getvalue()
    assert "hidden" not in text
    assert "WARNING uvicorn.error [None] shown 1 k='v'" in text


async def test_real_server_writes_json_lines_with_request_ids(tmp_path):
    log = tmp_path / "server.log"
    server = Server(f"sqlite:///{tmp_path / 'ledger.db'}", log).start()
    try:
        async with httpx.AsyncClient(base_url=server.url, headers=auth(ADMIN_TOKEN)) as http:
            body = {"name": "mnist", "target_epsilon": 3.0, "target_delta": 1e-5}
            await http.post("/v1/datasets", json=body)
            response = await http.post(
                "/v1/runs", json=run_body(), headers={"X-Request-ID": "srv-7"}
            )
            assert response.headers["x-request-id"] == "srv-7"
    finally:
        server.stop()
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    tagged = [line for line in lines if line["request_id"] == "srv-7"]
    assert {line.get("event") for line in tagged} == {"admission", "request"}
    assert any(line["logger"].startswith("uvicorn") for line in lines)  # uvicorn's own, as JSON
    assert ADMIN_TOKEN not in log.read_text()


FORGED = "2026-01-01 00:00:00,000 INFO dpledger.security [None] forged"


def test_text_format_escapes_every_user_controlled_value():
    """A CR/LF in the message, a field, the request id or an exception stays on its line."""
    stream = io.StringIO()
    handler = make_handler(Settings(log_format="text"), stream)
    logger = logging.getLogger("dpledger.test_escape")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("GET %s", f"/v1/x\r\n{FORGED}", extra=log_fields(path=f"/\n{FORGED}"))
        token = request_id_var.set(f"id\n{FORGED}")
        try:
            raise ValueError(f"bad\n{FORGED}")
        except ValueError:
            logger.exception("failed\r%s", FORGED)
        finally:
            request_id_var.reset(token)
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    lines = stream.getvalue().splitlines()
    assert not any(
        line.startswith(FORGED[:4]) and "forged" in line.split("]", 1)[0] for line in lines
    )
    records = [line for line in lines if not line.startswith(" | ")]
    assert len(records) == 2, lines
    assert all(" dpledger.test_escape [" in line for line in records)
    assert "\\r\\n" + FORGED in records[0]
    assert not any(line.startswith("2026-01-01") for line in lines)


async def test_real_server_text_log_cannot_be_forged_by_a_path(tmp_path):
    """No token needed: an encoded CR/LF in the path must not start a new log line."""
    log = tmp_path / "server.log"
    server = Server(
        f"sqlite:///{tmp_path / 'ledger.db'}", log, env={"DPLEDGER_LOG_FORMAT": "text"}
    ).start()
    try:
        async with httpx.AsyncClient(base_url=server.url) as http:
            response = await http.get("/v1/nothing%0d%0a2026-01-01%2000:00:00,000%20INFO%20forged")
            assert response.status_code in (404, 422)
    finally:
        server.stop()
    lines = log.read_text().splitlines()
    assert any("forged" in line for line in lines)
    assert not any(line.startswith("2026-01-01") for line in lines), lines
