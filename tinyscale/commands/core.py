"""`tinyscale targets`, `scale` and `fit`."""

from __future__ import annotations

import typer

from tinyscale.cli import app, reports_errors
from tinyscale.targets import load_all_targets


def _kib(n: int) -> str:
    return f"{n / 1024:,.1f} KiB"


@app.command()
@reports_errors
def targets() -> None:
    """List the bundled boards and their budgets."""
    rows = [("target", "board", "kernels", "model flash", "arena RAM (largest region)")]
    for target in load_all_targets():
        best = max(target.arena_regions, key=lambda region: region.arena_budget_bytes)
        rows.append(
            (
                target.name,
                target.board,
                target.kernel_library,
                _kib(target.flash.model_budget_bytes),
                f"{_kib(best.arena_budget_bytes)} ({best.name})",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        typer.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
