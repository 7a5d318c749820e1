"""Where the commands print and the printing they share: records as a table or JSON, the steps of a
long command with their times, a progress bar, and a finished report with its files."""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.status import Status
from rich.table import Table

if TYPE_CHECKING:
    from pe_export.report import Report

# Every command prints on `console`; the helpers below look it up when they print (a test may swap it here).
console = Console()
err_console = Console(stderr=True)


def print_table(title: str, records: list[dict], as_json: bool, shown: Optional[dict[str, Callable]] = None) -> None:
    """Records as JSON, or as a table that never cuts a cell: folded in a terminal, Markdown in a
    pipe or a log. `shown` formats a column's values for reading."""
    if as_json:
        sys.stdout.write(json.dumps(records, indent=2) + "\n")
        return
    columns = list(records[0]) if records else []
    rows = [[(shown or {}).get(c, str)(r[c]) for c in columns] for r in records]
    if console.is_terminal:
        table = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False)
        for column in columns:
            table.add_column(column, no_wrap=True)
        for row in rows:
            table.add_row(*row)
        natural = sum(max(len(c), *(len(r[i]) for r in rows)) + 3 for i, c in enumerate(columns))
        if natural <= console.width:
            console.print(table)
            return
        for row in rows:  # too narrow for the table: one record a paragraph, nothing cut
            details = ", ".join(f"{c} {v}" for c, v in zip(columns[1:], row[1:]) if v)
            console.print(f"[bold]{escape(row[0])}[/]  {escape(details)}", highlight=False)
    else:
        lines = [f"| {' | '.join(columns)} |", f"|{'---|' * len(columns)}", *(f"| {' | '.join(r)} |" for r in rows)]
        sys.stdout.write("\n".join(lines) + "\n")


class _Stages:
    """The steps of a long command: the current one on a spinner, each finished one as a line with
    its time, so that a terminal, a pipe and a log all show what was done and how long it took.
    A step "name: detail" followed by "name: other detail" (e.g. images done) updates in place."""

    def __init__(self, status: Status):
        self.status = status
        self.step: Optional[str] = None
        self.started = 0.0

    def __call__(self, step: str) -> None:
        same = self.step is not None and ":" in step and step.split(":")[0] == self.step.split(":")[0]
        if not same:
            self.finish()
            self.started = time.perf_counter()
        self.step = step
        self.status.update(escape(step))

    def finish(self) -> None:
        if self.step is not None:
            seconds = time.perf_counter() - self.started
            console.print(f"[green]✓[/] {escape(self.step)} [dim]({seconds:.1f} s)[/]", highlight=False, soft_wrap=True)
        self.step = None


@contextlib.contextmanager
def stages(first: str) -> Iterator[Callable[[str], None]]:
    """Report a command's steps (see _Stages); the last one is marked done only when all went well."""
    with console.status(escape(first)) as status:
        steps = _Stages(status)
        steps(first)
        yield steps
        steps.finish()


def progress_bar() -> Progress:
    """A bar for a command's rows (results), gone from the screen when it ends."""
    return Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=console, transient=True)


def finish_report(report: Report, json_path: Optional[Path], md_path: Optional[Path]) -> None:
    """Print a measuring command's report, write its JSON and Markdown; exit 130 if it was interrupted."""
    from pe_export.report import to_markdown

    console.print(to_markdown(report), highlight=False)
    report.write(json_path, md_path)
    for path in (json_path, md_path):
        if path:
            console.print(f"wrote {path}")
    if report.interrupted:
        console.print("[dim]note:[/] the report holds the rows finished before the interruption")
        raise typer.Exit(130)
