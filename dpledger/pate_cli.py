"""The `dpledger pate` command: noisy-max labels from teacher votes, and their privacy report.

The work is split so that other front ends can reuse it: :func:`load_votes` reads the input
files, :func:`run_pate` aggregates and analyses an in-memory vote array (no I/O),
:func:`save_labels` writes the labels, and :func:`charge_pate_job` registers the job with the
ledger service and charges its batches (``--service``).
Every bad input surfaces as a dp_core ``InvalidParameterError``, which the command turns into one
line on stderr and exit code 2.
"""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path
from typing import Annotated, Any, Literal, cast

import numpy as np
import numpy.typing as npt
import typer

from dp_core import aggregate_votes, analyze_votes, pate_mechanism
from dp_core.errors import InvalidParameterError
from dp_core.mechanisms import mechanism_to_dict
from dp_core.pate import validate_votes, votes_from_predictions
from dp_core.randomness import warn_reproducible_noise
from dp_core.validation import non_negative_int
from dpledger.accounting_cli import DEFAULT_DELTA
from dpledger.client import BudgetExceeded, LedgerClient, LedgerError, Pate
from dpledger.errors import BudgetRefusal, ledger_at
from dpledger.options import SERVICE_ENV, TOKEN_ENV, service_url


def _load_array(option: str, path: Path) -> npt.NDArray[Any]:
    """Read one array from a .npy file (never unpickling); I/O errors become dp_core errors."""
    try:
        array = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise InvalidParameterError(option, str(path), "file not found") from None
    except (OSError, ValueError, EOFError) as error:
        first_sentence = str(error).split(". ")[0].splitlines()[0] if str(error) else ""
        reason = f"not a readable .npy array ({type(error).__name__}: {first_sentence})"
        raise InvalidParameterError(option, str(path), reason) from None
    if not isinstance(array, np.ndarray):
        array.close()
        raise InvalidParameterError(option, str(path), "must hold one array (.npy, not .npz)")
    return array


def load_votes(
    *, votes: Path | None, predictions: Path | None, num_classes: int | None = None
) -> npt.NDArray[np.float64]:
    """Return the (queries x classes) vote counts from exactly one of the two files.

    Args:
        votes: A .npy file holding a (queries x classes) array of vote counts.
        predictions: A .npy file holding a (teachers x queries) array of predicted labels.
        num_classes: Number of classes of ``predictions`` (default: largest label + 1).
    """
    if (votes is None) == (predictions is None):
        raise InvalidParameterError(
            "votes", "--votes/--predictions", "give exactly one of --votes and --predictions"
        )
    if predictions is not None:
        counts = votes_from_predictions(
            _load_array("predictions", predictions), num_classes=num_classes
        )
        return validate_votes(counts)
    counts_array = validate_votes(_load_array("votes", cast(Path, votes)))
    if num_classes is not None and num_classes != counts_array.shape[1]:
        raise InvalidParameterError(
            "num_classes", num_classes, f"differs from the votes' {counts_array.shape[1]} classes"
        )
    return counts_array


def run_pate(
    votes: object,
    *,
    aggregator: str,
    noise_multiplier: float,
    delta: float,
    seed: int | None = None,
) -> tuple[npt.NDArray[np.int64], dict[str, Any]]:
    """Aggregate ``votes`` and analyse them; nothing is read or written.

    Returns:
        The noisy labels, and a JSON-ready report: ``epsilon_data_independent`` (a DP guarantee,
        what a ledger charges; ``mechanism`` is its record), ``epsilon_data_dependent`` (computed
        from the votes, reporting only), their orders, the seed (None: the noise was secret;
        an int: reproducible noise, no guarantee against anyone who knows it) and the share of
        noisy labels equal to the plurality vote.
    """
    counts = validate_votes(votes)
    mechanism = pate_mechanism(
        aggregator, noise_multiplier=noise_multiplier, queries=counts.shape[0]
    )
    report = analyze_votes(counts, mechanism, delta=delta, warn=False)
    labels = aggregate_votes(counts, mechanism, seed=seed)
    agreement = float(np.mean(labels == np.argmax(counts, axis=1))) if labels.size else None
    return labels, {
        "aggregator": report.aggregator,
        "noise_multiplier": noise_multiplier,
        "queries": int(counts.shape[0]),
        "classes": int(counts.shape[1]),
        "seed": seed,
        "reproducible_noise": seed is not None,
        "delta": report.delta,
        "epsilon_data_independent": report.epsilon_data_independent,
        "order_data_independent": report.data_independent.order,
        "epsilon_data_dependent": report.epsilon_data_dependent,
        "order_data_dependent": report.data_dependent.order,
        "at_grid_edge": report.data_independent.at_grid_edge or report.data_dependent.at_grid_edge,
        "agreement_with_plurality": agreement,
        "mechanism": mechanism_to_dict(mechanism),
    }


def save_labels(labels: npt.NDArray[np.int64], out: Path) -> Path:
    """Write ``labels`` to ``out`` (``.npy`` appended if missing) and return the path written."""
    path = out if out.suffix == ".npy" else out.with_name(out.name + ".npy")
    try:
        np.save(path, labels, allow_pickle=False)
    except OSError as error:
        raise InvalidParameterError("out", str(path), f"cannot write ({error.strerror})") from None
    return path.resolve()


class LedgerRefusal(BudgetRefusal):
    """The ledger service refused the PATE job up front: it does not fit the dataset's budget."""


def refusal_message(refusal: BudgetExceeded, *, dataset: str) -> str:
    """Return the one line saying that (and by how much) the ledger refused."""
    projected = refusal.epsilon_projected
    remaining = refusal.epsilon_remaining
    needs = "unbounded" if projected is None else f"{projected:.6g}"
    left = "" if remaining is None else f", {remaining:.6g} remaining"
    fits = refusal.epochs_that_fit
    hint = "" if not fits else f"; {fits} batch{'' if fits == 1 else 'es'} would fit"
    return f"refused: budget_exceeded: epsilon of {dataset!r} would reach {needs}{left}{hint}"


def charge_pate_job(
    client: LedgerClient,
    *,
    dataset: str,
    name: str,
    mechanism: Pate,
    batches: int,
    reproducible_noise: bool = False,
) -> tuple[int, int, str]:
    """Register a PATE job with the ledger and charge its batches in turn, before answering them.

    Returns the run id, how many batches were charged (their queries may be answered), and why
    charging stopped (``completed`` or the ledger's refusal). Raises :class:`LedgerRefusal` when
    the job is refused up front, and the client's :class:`LedgerError` on any other failure (the
    job is then finished, so its unused reservation is released, when the ledger still answers).
    """
    try:
        run = client.create_run(
            dataset=dataset, name=name, mechanism=mechanism, reproducible_noise=reproducible_noise
        )
    except BudgetExceeded as refusal:
        raise LedgerRefusal(refusal_message(refusal, dataset=dataset)) from refusal
    charged, reason = 0, "completed"
    try:
        for batch in range(batches):
            try:
                client.charge_batch(run.id, batch)
            except BudgetExceeded as refusal:
                reason = refusal_message(refusal, dataset=dataset)
                break
            charged += 1
    except LedgerError:
        with contextlib.suppress(LedgerError):
            client.finish_run(run.id)
        raise
    client.finish_run(run.id)
    return run.id, charged, reason


def _charged_queries(
    counts: npt.NDArray[np.float64],
    *,
    service: str,
    token: str | None,
    dataset: str | None,
    aggregator: str,
    noise_multiplier: float,
    batch_size: int | None,
    reproducible_noise: bool = False,
) -> tuple[npt.NDArray[np.float64], dict[str, Any]]:
    """Charge the ledger for ``counts`` batch by batch; return the rows that may be answered."""
    if not token or not dataset:
        raise InvalidParameterError("service", service, "needs --token and --dataset too")
    queries = int(counts.shape[0])
    size = queries if batch_size is None else batch_size
    if size < 1:
        raise InvalidParameterError("batch_size", size, "must be a positive integer")
    kind = cast(Literal["gnmax", "lnmax"], aggregator)  # checked by pate_mechanism before
    mechanism = Pate(aggregator=kind, noise_multiplier=noise_multiplier, queries=queries,
                     batch_size=size)  # fmt: skip
    with LedgerClient(service, token=token) as client:
        run_id, charged, reason = charge_pate_job(
            client, dataset=dataset, name="pate", mechanism=mechanism,
            batches=-(-queries // size), reproducible_noise=reproducible_noise,
        )  # fmt: skip
    answered = min(queries, charged * size)
    return counts[:answered], {"run_id": run_id, "batches_charged": charged,
                               "queries_answered": answered, "stop_reason": reason}  # fmt: skip


def _default_out(votes: Path | None, predictions: Path | None) -> Path:
    source = cast(Path, votes if votes is not None else predictions)
    return source.with_name(source.stem + ".labels.npy")


def _noise_source(r: dict[str, Any]) -> str:
    if r["seed"] is None:
        return "secret noise"
    return f"reproducible noise from seed {r['seed']}: no guarantee against anyone who knows it"


def _human(r: dict[str, Any]) -> str:
    noise = "sigma" if r["aggregator"] == "gnmax" else "b"
    agreement = r["agreement_with_plurality"]
    agree = f"; {agreement:.1%} agree with the plurality vote" if agreement is not None else ""
    return "\n".join(
        [
            f"noisy labels: {r['labels_path']} ({r['queries']} queries, {r['classes']} classes, "
            f"{r['aggregator']} {noise} = {r['noise_multiplier']:g}, {_noise_source(r)}{agree})",
            f"epsilon_data_independent = {r['epsilon_data_independent']:.4f} at delta = "
            f"{r['delta']:g} (Renyi order {r['order_data_independent']:.2f}; the DP guarantee)",
            f"epsilon_data_dependent = {r['epsilon_data_dependent']:.4f} at delta = "
            f"{r['delta']:g} (Renyi order {r['order_data_dependent']:.2f}; computed from the "
            "votes: reporting only, not itself private)",
        ]
    )


def pate(
    ctx: typer.Context,
    aggregator: Annotated[str, typer.Option("--aggregator", help="gnmax or lnmax.")],
    noise_multiplier: Annotated[
        float,
        typer.Option(
            "--noise-multiplier",
            help="Noise on each vote count, in votes: Gaussian std sigma (gnmax) or Laplace "
            "scale b = 1/gamma (lnmax).",
        ),
    ],
    delta: Annotated[
        float, typer.Option("--delta", help="Target delta, in (0, 1).")
    ] = DEFAULT_DELTA,
    votes: Annotated[
        Path | None, typer.Option("--votes", help=".npy file: (queries x classes) vote counts.")
    ] = None,
    predictions: Annotated[
        Path | None,
        typer.Option("--predictions", help=".npy file: (teachers x queries) predicted labels."),
    ] = None,
    num_classes: Annotated[
        int | None, typer.Option("--num-classes", help="Classes of --predictions.")
    ] = None,
    seed: Annotated[
        int | None,
        typer.Option(
            "--seed",
            help="Seed of the noise, with --reproducible-noise only [default: secret OS entropy].",
        ),
    ] = None,
    reproducible_noise: Annotated[
        bool,
        typer.Option(
            "--reproducible-noise",
            help="Draw the noise from --seed (debugging, tests): the guarantee then does NOT "
            "hold against anyone who knows the seed; a warning is printed.",
        ),
    ] = False,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Where to write the labels (default: <input>.labels.npy)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    service: Annotated[
        str | None,
        typer.Option(
            "--service",
            envvar=SERVICE_ENV,
            help="Ledger URL: charge each batch before answering it.",
        ),
    ] = None,
    token: Annotated[
        str | None, typer.Option("--token", envvar=TOKEN_ENV, help="Bearer token.")
    ] = None,
    dataset: Annotated[str | None, typer.Option("--dataset", help="Dataset in the ledger.")] = None,
    batch_size: Annotated[
        int | None, typer.Option("--batch-size", help="Queries per ledger charge (default: all).")
    ] = None,
) -> None:
    """Noisy-max labels (PATE) from teacher votes, with data-independent and data-dependent epsilon.

    With --service the job is registered with the ledger (its data-independent RDP reserved) and
    each batch of queries is charged before it is answered; a refusal stops the answering there.
    """
    ledger: dict[str, Any] = {}
    seed = _noise_seed(seed, reproducible_noise)
    counts = load_votes(votes=votes, predictions=predictions, num_classes=num_classes)
    url = service_url(ctx, service, names_ledger_object=dataset is not None)
    if url is not None:
        pate_mechanism(aggregator, noise_multiplier=noise_multiplier, queries=1)  # validate
        with ledger_at(url):
            counts, ledger = _charged_queries(
                counts, service=url, token=token, dataset=dataset, aggregator=aggregator,
                noise_multiplier=noise_multiplier, batch_size=batch_size,
                reproducible_noise=seed is not None,
            )  # fmt: skip
    labels, result = run_pate(
        counts, aggregator=aggregator, noise_multiplier=noise_multiplier, delta=delta, seed=seed
    )
    path = save_labels(labels, out if out is not None else _default_out(votes, predictions))
    result = {"labels_path": str(path), **result, **ledger}
    if result["at_grid_edge"]:
        typer.echo("warning: optimal Renyi order at the edge of the grid", err=True)
    finite = {
        k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in result.items()
    }
    typer.echo(json.dumps(finite) if as_json else _human(result))


def _noise_seed(seed: int | None, reproducible: bool) -> int | None:
    """The seed of the noise: None (secret) unless --reproducible-noise (then loudly)."""
    if seed is not None and not reproducible:
        raise InvalidParameterError(
            "seed", seed, "seeds the noise: add --reproducible-noise (the guarantee then does not "
            "hold against anyone who knows the seed), or drop --seed for secret noise",
        )  # fmt: skip
    if not reproducible:
        return None
    if seed is None:
        raise InvalidParameterError("reproducible_noise", True, "needs --seed")
    seed = non_negative_int("seed", seed)
    warn_reproducible_noise(seed)
    return seed


def register(cli: typer.Typer) -> None:
    """Add the `pate` command to the root CLI."""
    cli.command("pate")(pate)
