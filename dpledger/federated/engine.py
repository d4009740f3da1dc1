"""Where the Flower apps run: Flower's simulation engine (Ray), or the in-process grid.

``simulation`` (the default of ``dpledger fl``) is Flower's own Simulation Engine
(``flwr.simulation.run_simulation``, Flower 1.32's only backend is Ray): the ServerApp runs in a
thread of this process, against Flower's in-memory SuperLink state; each of the N nodes is a
virtual SuperNode whose ClientApp runs in a Ray actor process (``cpus`` actors, one CPU each).
Starting and stopping Ray costs ~10 s on two cores, whatever the job.

``inprocess`` is :class:`dpledger.federated.grid.LocalGrid`: the same apps, one process, no Ray.
"""

from __future__ import annotations

import gc
import logging
import os
import threading
import warnings
from typing import Any, Literal

from flwr.clientapp import ClientApp
from flwr.common import Context, RecordDict
from flwr.serverapp import ServerApp

from dpledger.federated.grid import LocalGrid

__all__ = ["ENGINES", "Engine", "EngineError", "run_apps"]

Engine = Literal["simulation", "inprocess"]
ENGINES: tuple[Engine, ...] = ("simulation", "inprocess")


class EngineError(RuntimeError):
    """Flower's simulation engine itself failed (Ray could not start, an actor died, ...)."""


def run_apps(
    server_app: ServerApp,
    client_app: ClientApp,
    *,
    nodes: int,
    engine: Engine = "simulation",
    cpus: int | None = None,
    cancel: threading.Event | None = None,
) -> None:
    """Run ``server_app`` against ``nodes`` nodes (partition-id 0..nodes-1) running ``client_app``.

    Exceptions raised in the ServerApp propagate (Flower's simulation re-raises them here).
    ``cancel`` is set when the simulation ends, however it ends: pass the strategy's
    (``DpFedAvgStrategy.cancel``) so that the ServerApp's thread cannot outlive the engine.
    """
    if engine == "inprocess":
        grid = LocalGrid(client_app, nodes=nodes)
        server_app(
            grid, Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={})
        )
        return
    if engine != "simulation":
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, not {engine!r}")
    _run_simulation(
        server_app,
        client_app,
        nodes=nodes,
        cpus=cpus or min(os.cpu_count() or 1, 4),
        cancel=cancel or threading.Event(),
    )


def _run_simulation(
    server_app: ServerApp, client_app: ClientApp, *, nodes: int, cpus: int, cancel: threading.Event
) -> None:
    try:
        import ray  # noqa: F401  (Flower's simulation extra)
    except ModuleNotFoundError:
        raise ValueError(
            "--engine simulation needs Ray: pip install 'dpledger[federated]' (flwr[simulation]),"
            " or use --engine inprocess"
        ) from None
    from flwr.simulation import run_simulation

    # Ray warns (a FutureWarning) about a default it will change unless this is set (it only
    # concerns GPUs, which the actors do not ask for).
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    init_args: dict[str, Any] = {
        "num_cpus": cpus,
        "include_dashboard": False,
        "log_to_driver": False,
    }  # Flower passes this process's sys.path on to the actors (they unpickle the ClientApp)
    backend_config = {"client_resources": {"num_cpus": 1, "num_gpus": 0.0}, "init_args": init_args}
    flower_log = logging.getLogger("flwr")
    flower_log.addFilter(_not_deprecation)
    # Ray 2.55 leaves a /dev/null handle and the Popen objects of the processes it stopped to the
    # garbage collector (ResourceWarnings): collect them here, where those warnings are ignored.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        try:
            run_simulation(
                server_app=server_app,
                client_app=client_app,
                num_supernodes=nodes,
                backend_name="ray",
                backend_config=backend_config,
            )
        except RuntimeError as error:
            if type(error) is not RuntimeError:  # the ServerApp's own error: raised as it is
                raise
            root: BaseException = error
            while root.__cause__ is not None:
                root = root.__cause__
            message = f"Flower's simulation engine failed: {type(root).__name__}: {root}"
            raise EngineError(message) from error
        finally:
            cancel.set()  # a ServerApp still waiting for replies gives up (EngineStopped)
            flower_log.removeFilter(_not_deprecation)
            gc.collect()


def _not_deprecation(record: logging.LogRecord) -> bool:
    """Drop Flower 1.32's notice that run_simulation is deprecated (for ``flwr run``, see README)."""
    return "`run_simulation` function is deprecated" not in record.getMessage()
