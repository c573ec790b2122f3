"""What the process says about itself when a part of it fails, and the budgets it keeps."""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import logging
from pathlib import Path

import pytest
from ml_service.serving import service as service_module
from ml_service.serving.metrics import new_registry
from ml_service.serving.model import LOCAL_SOURCE, Resolved, load_local
from ml_service.serving.schemas import example_row
from ml_service.serving.server import (
    ACCEPT_BURSTS,
    FD_RESERVE,
    LINGERING_CONNECTIONS,
    PROBE_CONNECTIONS,
    fd_budget,
    quiet_accept_errors,
)
from ml_service.serving.service import Service
from ml_service.serving.settings import Settings
from support.sklearn_model import save_model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_model(tmp_path_factory.mktemp("resilience") / "model")


def loaded(model_dir: Path):  # type: ignore[no-untyped-def]
    return load_local(Resolved("tiny", "1", None, "", model_dir, {}, LOCAL_SOURCE))


def test_a_warm_up_that_keeps_failing_makes_the_process_say_it_is_broken(
    model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MLflow's scoring machinery that cannot be loaded (here: a signature it cannot read)
    used to leave `/ready` at 200 while every request that needs it answered 500."""
    monkeypatch.setattr(service_module.time, "sleep", lambda _: None)
    svc = Service(Settings(model_uri=str(model_dir)), new_registry())
    model = loaded(model_dir)
    broken = dataclasses.replace(model, raw_signature={**model.raw_signature, "params": "{"})
    svc.model = broken
    assert svc.readiness()[0] == 200 and svc.liveness()[0] == 200
    svc._warm_up(broken)
    assert svc.broken
    assert svc.readiness()[0] == 503 and svc.liveness()[0] == 503


def test_a_warm_up_that_succeeds_breaks_nothing(model_dir: Path) -> None:
    svc = Service(Settings(model_uri=str(model_dir)), new_registry())
    svc.model = model = loaded(model_dir)
    svc._warm_up(model)
    assert svc.broken is None and svc.readiness()[0] == 200 and svc.liveness()[0] == 200


def test_the_openapi_example_is_made_up_from_the_reference_statistics(model_dir: Path) -> None:
    model = loaded(model_dir)
    row = example_row(model.reference, model.feature_names)
    assert row is not None and len(row) == len(model.feature_names)
    for value, name in zip(row, model.feature_names, strict=True):
        stats = model.reference["feature_stats"][name]
        assert stats["min"] <= value <= stats["max"]
        assert value == float(f"{value:.3g}")  # rounded: not a value of the data
    assert not any(list(r) == row for r in model.input_example.tolist())
    assert example_row(None, model.feature_names) is None


@pytest.mark.parametrize("open_files", [256, 1024, 4096, 1 << 20])
def test_the_connection_budget_fits_under_the_open_file_limit(open_files: int) -> None:
    budget = fd_budget(512, open_files)
    bursts = ACCEPT_BURSTS * (budget.backlog + PROBE_CONNECTIONS)
    used = budget.max_connections + PROBE_CONNECTIONS + bursts + budget.lingering + FD_RESERVE
    assert used <= open_files
    assert budget.max_connections == 512 or open_files < 1024
    assert budget.backlog >= 8
    # connections turned away at the cap linger (not reset) within the budget
    assert 0 < budget.lingering <= LINGERING_CONNECTIONS


def test_accept_running_out_of_descriptors_is_one_line_without_a_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """asyncio reports each failed accept() to the loop's exception handler, traceback and
    all, then retries a second later; the server's handler makes it one warning."""
    loop = asyncio.new_event_loop()
    try:
        quiet_accept_errors(loop)
        with caplog.at_level(logging.WARNING):
            loop.call_exception_handler(
                {
                    "message": "socket.accept() out of system resource",
                    "exception": OSError(errno.EMFILE, "Too many open files"),
                }
            )
            loop.call_exception_handler({"message": "something else", "exception": KeyError(1)})
    finally:
        loop.close()
    emfile, other = caplog.records
    assert "accept() failed (EMFILE)" in emfile.getMessage() and emfile.exc_info is None
    assert other.exc_info is not None  # anything else keeps asyncio's own report
