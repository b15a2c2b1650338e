"""`dermctl ingest`: read a data set in its published layout and write a clean, split, de-duplicated manifest."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from dermctl.cli.common import emit, get_state, handle_errors, log, make_progress, out_console, parse_csv_list

if TYPE_CHECKING:
    from dermctl.data.ingest import IngestSummary

NAME = "ingest"
SHORT_HELP = "Read a data set in its published layout and write a clean, split, de-duplicated manifest."
HELP = (
    SHORT_HELP
    + "\n\nEvery image is decoded once (cached in manifests/.hashcache.json); corrupt, empty, truncated and "
    "too-small files are excluded, exact duplicates collapse to one row, images found in --exclude "
    "manifests (same bytes, same published id, or a near-duplicate pHash) are dropped, near duplicates "
    "inside the set are put in one group, and grouped, stratified, seeded train/val/test splits are made "
    "(the publisher's test set is kept when there is one).\n\n"
    "Writes manifests/<name>.csv and manifests/<name>.report.json (what was excluded and why).\n\n"
    "Examples:\n\n"
    "  dermctl ingest --dataset ham10000 --root ~/data/HAM10000\n\n"
    "  dermctl ingest --dataset isic-archive --root ~/data/isic --exclude ham10000\n\n"
    "  dermctl ingest --dataset csv --root demo/metadata.csv --label-column label --group-column patient_id\n\n"
    "  dermctl ingest --dataset folder --root ~/data/unlabelled --name my-corpus"
)


@handle_errors
def command(
    ctx: typer.Context,
    dataset: Annotated[
        str,
        typer.Option(
            "--dataset",
            "-d",
            help="Adapter: ham10000, pad-ufes-20, fitzpatrick17k, isic-archive, derm7pt, mednode, sd260, ph2, "
            "folder (one sub-folder per class, or a flat folder of unlabelled images) or csv (a table with a "
            "path column).",
        ),
    ],
    root: Annotated[
        Path,
        typer.Option(
            "--root", "-r", help="The data set's folder as published (csv: the table or its folder)."
        ),
    ],
    name: Annotated[
        str | None,
        typer.Option(
            "--name", help="Manifest name [default: the data set name; folder/csv: the root's name]."
        ),
    ] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Manifest path [default: manifests/<name>.csv].")
    ] = None,
    label_column: Annotated[
        str | None,
        typer.Option(
            "--label-column",
            help="Metadata column holding the label, in any case [default: the adapter's; csv: the first of "
            "label, labels, class, class_name, diagnosis, dx, target].",
        ),
    ] = None,
    group_column: Annotated[
        str | None,
        typer.Option(
            "--group-column",
            help="csv: column holding the group, in any case [default: the first of group, patient_id, "
            "patient, subject_id, subject, lesion_id, lesion, case_id].",
        ),
    ] = None,
    granularity: Annotated[
        str | None,
        typer.Option("--granularity", help="Fitzpatrick17k label granularity: three, nine or fine."),
    ] = None,
    role: Annotated[
        str | None,
        typer.Option(
            "--role", help="task (labelled, evaluated) or corpus (pretraining only) [default: the adapter's]."
        ),
    ] = None,
    unlabelled: Annotated[
        bool,
        typer.Option(
            "--unlabelled",
            help="folder/csv: ingest a pretraining corpus, ignoring labels (csv: needed for a table without a "
            "label column).",
        ),
    ] = False,
    exclude: Annotated[
        list[str] | None,
        typer.Option(
            "--exclude",
            "-x",
            help="Manifest (path or name in manifests/) whose images must not appear here: same sha256, same "
            "image_id or a pHash within --near-dup-distance. Repeat or comma-separate for several.",
        ),
    ] = None,
    strict: Annotated[
        bool, typer.Option("--strict", help="Fail (writing nothing) on any corrupt, tiny or missing image.")
    ] = False,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the train/val/test split.")] = 0,
    test_fraction: Annotated[
        float, typer.Option("--test-fraction", help="Share of images for test when the publisher fixes none.")
    ] = 0.2,
    val_fraction: Annotated[
        float,
        typer.Option(
            "--val-fraction", help="Share of the non-test images for val (corpora: the only split)."
        ),
    ] = 0.15,
    min_size: Annotated[
        int, typer.Option("--min-size", help="Exclude images whose shorter side is below this many pixels.")
    ] = 32,
    near_dup_distance: Annotated[
        int,
        typer.Option(
            "--near-dup-distance", help="Max pHash Hamming distance (of 64 bits) counted as a near duplicate."
        ),
    ] = 4,
    workers: Annotated[
        int | None,
        typer.Option("--workers", "-j", help="Decoding threads [default: the CPU count, at most 16]."),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Replace an existing manifest whose content would change.")
    ] = False,
) -> None:
    from dermctl.data.ingest import IngestOptions, run_ingest

    state = get_state(ctx)
    excludes = [Path(item) for value in (exclude or []) for item in parse_csv_list("--exclude", value)]
    options = IngestOptions(
        name=name,
        output=output,
        label_column=label_column,
        group_column=group_column,
        granularity=granularity,
        role=role,
        unlabelled=unlabelled,
        exclude=excludes,
        strict=strict,
        seed=seed,
        test_fraction=test_fraction,
        val_fraction=val_fraction,
        min_size=min_size,
        near_dup_distance=near_dup_distance,
        workers=workers,
        force=force,
    )
    with make_progress(state) as bar:
        task = bar.add_task("validating images", total=None)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        summary = run_ingest(dataset, root, state.workspace, options, progress=progress)
    log(
        state,
        f"{summary.status} {summary.manifest_path} ({summary.rows} rows); report: {summary.report_path}",
    )
    emit(state, summary.to_dict(), lambda: _render(summary))


def _render(summary: IngestSummary) -> None:
    from rich.table import Table

    labels = sorted({label for per in summary.counts.values() for label in per})
    table = Table(title=f"{summary.name}: {summary.variant} ({summary.role})")
    table.add_column("label")
    splits = [s for s in ("train", "val", "test") if summary.counts.get(s)]
    for split in splits:
        table.add_column(split, justify="right")
    table.add_column("total", justify="right")
    for label in labels:
        cells = [summary.counts.get(s, {}).get(label, 0) for s in splits]
        table.add_row(label or "(unlabelled)", *map(str, cells), str(sum(cells)))
    totals = [sum(summary.counts.get(s, {}).values()) for s in splits]
    table.add_row("[bold]total[/]", *map(str, totals), str(sum(totals)))
    out_console.print(table)
    dropped = ", ".join(f"{k.replace('_', ' ')}: {v}" for k, v in summary.excluded.items() if v)
    out_console.print(
        f"excluded: {dropped or 'none'}; near-duplicate pairs: {summary.near_duplicate_pairs} "
        f"({summary.near_duplicate_pairs_apart} in different groups: see the ingest report)"
    )
    out_console.print(f"manifest {summary.status}: {summary.manifest_path}")
