"""The `dpledger audit` command: a one-run empirical privacy audit of a DP-SGD run.

Trains once with m canaries (Steinke, Nasr & Jagielski 2023) and prints the run's theoretical
epsilon beside the empirical lower bound, plus a loss-threshold membership-inference report.
With ``--service URL --token T --dataset NAME`` the audit's training run is itself a DP-SGD run of
the ledger (registered with its plan reserved, charged before every epoch: a refusal exits 3 with
one stderr line and stores nothing), and the result is stored with the run
(``POST /v1/runs/{id}/audits``). torch is imported only when the command runs.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated, Any

import typer

from dp_core.errors import InvalidParameterError
from dpledger.options import SERVICE_ENV, TOKEN_ENV, service_url

if TYPE_CHECKING:
    from dp_core.trainer.audit import AuditConfig


def _human(summary: dict[str, Any]) -> str:
    theory = summary["epsilon_theoretical"]
    mia = summary["membership_inference"]
    tprs = "  ".join(f"TPR@FPR {k}: {v:.4f}" for k, v in mia["tpr_at_fpr"].items())
    return "\n".join(
        [
            f"epsilon (theoretical, delta={summary['delta']:g}): "
            + ("none (non-private run)" if theory is None else f"{theory:.4f}"),
            f"epsilon lower bound (one-run audit, {summary['confidence']:.0%} confidence): "
            f"{summary['epsilon_lower_bound']:.4f}",
            f"canaries: {summary['canaries']} {summary['canary_kind']} "
            f"({summary['canaries_included']} trained on); "
            f"{summary['correct_guesses']}/{summary['guesses']} guesses correct",
            f"membership inference (loss threshold, {mia['members']} train vs "
            f"{mia['non_members']} held out): AUC {mia['auc']:.4f}  {tprs}",
            f"test accuracy: {summary['test_accuracy']:.4f}",
        ]
    )


def audit(
    ctx: typer.Context,
    data: Annotated[
        str,
        typer.Option(help="'digits', 'mnist:DIR', 'fashion-mnist:DIR' or 'cifar10:DIR'."),
    ] = "digits",
    model: Annotated[str, typer.Option(help="mlp, cnn (28x28) or vgg (CIFAR-10).")] = "mlp",
    canaries: Annotated[int, typer.Option(min=2, help="m, canaries each in w.p. 1/2.")] = 256,
    canary_kind: Annotated[
        str,
        typer.Option(
            help="gradient (white-box Dirac gradient canaries, last iterate) or input "
            "(black-box: random images with random labels, scored by their loss)."
        ),
    ] = "gradient",
    noise_multiplier: Annotated[float | None, typer.Option(help="sigma.")] = None,
    target_epsilon: Annotated[
        float | None, typer.Option(help="Calibrate sigma to this epsilon.")
    ] = None,
    non_private: Annotated[
        bool,
        typer.Option(
            help="No clipping, no noise: the positive control (the audit must find leakage)."
        ),
    ] = False,
    epochs: Annotated[int, typer.Option(min=1, help="Epochs.")] = 10,
    batch_size: Annotated[int, typer.Option(min=1, help="Expected batch size qN.")] = 256,
    lr: Annotated[float, typer.Option(help="Learning rate.")] = 1.0,
    optimizer: Annotated[str, typer.Option(help="sgd, momentum, adam or adagrad.")] = "sgd",
    max_grad_norm: Annotated[float, typer.Option(help="Per-example clip norm C.")] = 1.0,
    delta: Annotated[float, typer.Option(help="delta of both epsilons.")] = 1e-5,
    confidence: Annotated[float, typer.Option(help="Confidence of the lower bound.")] = 0.95,
    seed: Annotated[
        int,
        typer.Option(
            help="Seed of canaries, split, init (noise and sampling: secret unless "
            "--reproducible-noise)."
        ),
    ] = 0,
    reproducible_noise: Annotated[
        bool,
        typer.Option(
            "--reproducible-noise",
            help="Derive the training noise and sampling from --seed (no guarantee against "
            "anyone who knows it; recorded as such by the ledger).",
        ),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    service: Annotated[
        str | None,
        typer.Option(
            envvar=SERVICE_ENV,
            help="Ledger URL: charge the audit run there and store the result with it.",
        ),
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(envvar=TOKEN_ENV, help="Trainer or admin token (with --service)."),
    ] = None,
    dataset: Annotated[str | None, typer.Option(help="Ledger dataset (with --service).")] = None,
) -> None:
    """Audit a DP-SGD run in one training run: theoretical epsilon vs empirical lower bound.

    Exit status: 0 done; 2 invalid input; 3 the ledger's budget refused the audit run; 1 the
    ledger failed.
    """
    from dp_core.trainer.audit import AuditConfig, run_audit

    config = AuditConfig(
        data=data, model=model, canaries=canaries, epochs=epochs, batch_size=batch_size,
        lr=lr, optimizer=optimizer, noise_multiplier=noise_multiplier,
        target_epsilon=target_epsilon, max_grad_norm=max_grad_norm, delta=delta,
        confidence=confidence, seed=seed, reproducible_noise=reproducible_noise,
        private=not non_private, canary_kind=canary_kind,
    )  # fmt: skip
    url = service_url(ctx, service, names_ledger_object=dataset is not None)
    if url is None:
        summary = run_audit(config).to_dict()
    else:
        summary = _audit_on_ledger(config, service=url, token=token, dataset=dataset)
    typer.echo(json.dumps(summary) if as_json else _human(summary))


def _audit_on_ledger(
    config: AuditConfig, *, service: str, token: str | None, dataset: str | None
) -> dict[str, Any]:
    """Run the audit as a charged run of ``dataset`` and store its result with the run.

    Raises:
        CommandError: (exit 3) when the ledger refused the run or an epoch; nothing is stored.
        dp_core.trainer.errors.LedgerError: when the ledger failed or refused the request.
    """
    from dp_core.trainer.audit import run_audit
    from dp_core.trainer.errors import LedgerError as TrainerLedgerError
    from dpledger.client import LedgerClient, LedgerError
    from dpledger.gate import HttpBudgetGate

    if not token or not dataset:
        raise InvalidParameterError("service", service, "needs --token and --dataset too")
    if not config.private:
        raise InvalidParameterError(
            "non_private", True, "a run without noise cannot be charged to a ledger"
        )
    with LedgerClient(service, token=token) as client:
        gate = HttpBudgetGate(dataset=dataset, client=client)
        summary = run_audit(config, gate=gate).to_dict()
        assert gate.run_id is not None  # the run was admitted, or run_audit raised
        try:
            stored = client.add_audit(gate.run_id, {**summary, "seed": config.seed})
        except LedgerError as error:
            raise TrainerLedgerError(
                f"storing the audit of run {gate.run_id} failed: {error}",
                status=error.status,
                service_code=error.code,
            ) from error
    return {**summary, "seed": config.seed, "run_id": gate.run_id, "audit_id": stored.id}


def register(cli: typer.Typer) -> None:
    """Add ``audit`` to the root ``dpledger`` command."""
    cli.command("audit")(audit)
