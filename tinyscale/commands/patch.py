"""`tinyscale patch`: patch-based inference for any int8 .tflite model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from tinyscale.commands.app import app, reports_errors
from tinyscale.errors import ModelError
from tinyscale.graph.patch import DEFAULT_MAX_EXTRA_MACS


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ModelError(f"cannot read {path}: {exc.strerror or exc}") from None


def _change(before: int, after: int, unit: str = "B") -> str:
    ratio = f" ({after / before:.2f}x)" if before else ""
    return f"{before:,} {unit} -> {after:,} {unit}{ratio}"


def _rows(result, output: Path) -> list[tuple[str, str]]:
    before, after = result.before, result.after
    schedule = "not patched" if not result.patched else f"{result.grid[0]}x{result.grid[1]}"
    rows = [("grid", schedule)]
    if result.patched:
        shape = "x".join(str(n) for n in result.split_shape[1:])
        rows.append(("split tensor", f"{result.split_tensor} ({shape})"))
    rows += [
        ("arena (TFLM)", _change(before.arena_bytes, after.arena_bytes)),
        ("peak activations", _change(before.activations_bytes, after.activations_bytes)),
        ("flash (model)", _change(before.model_bytes, after.model_bytes)),
        ("MACs", f"{before.macs:,} -> {after.macs:,} (+{result.extra_macs:.1%})"),
        ("operators", f"{before.operators} -> {after.operators}"),
    ]
    if result.patched:
        rows.append(("check", f"max diff {result.max_diff} on {result.checked_inputs} random inputs (TFLM)"))
    if result.note:
        rows.append(("note", result.note))
    rows.append(("wrote", str(output)))
    return rows


@app.command()
@reports_errors
def patch(
    model: Annotated[Path, typer.Argument(help="int8 .tflite model (tinyscale's or any other).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Patched .tflite to write.")],
    grid: Annotated[Optional[str], typer.Option(help="Patch grid ROWSxCOLS, e.g. 2x2 (default: searched).")] = None,
    split_tensor: Annotated[Optional[str], typer.Option(help="Tensor the patched region ends at (default: searched).")] = None,
    max_extra_macs: Annotated[float, typer.Option(min=0.0, help="Cap on the extra MACs of the halos, as a fraction of the model's.")] = DEFAULT_MAX_EXTRA_MACS,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing output file.")] = False,
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of a table.")] = False,
) -> None:
    """Compute the first layers patch by patch (a standard int8 flatbuffer): smaller arena, bit-identical outputs."""
    from tinyscale.fsutil import atomic_write_bytes, refuse_clobber  # noqa: PLC0415 - keeps --help fast
    from tinyscale.search.patching import parse_grid, patch_flatbuffer  # noqa: PLC0415

    refuse_clobber(output, force)
    chosen_grid = parse_grid(grid) if grid is not None else None
    result = patch_flatbuffer(_read(model), grid=chosen_grid, split=split_tensor, max_extra_macs=max_extra_macs)
    atomic_write_bytes(output, result.data)
    if json_output:
        typer.echo(json.dumps({**result.to_dict(), "output": str(output)}, indent=2))
        return
    width = max(len(key) for key, _ in _rows(result, output))
    typer.echo("\n".join(f"{key.ljust(width)}  {value}" for key, value in _rows(result, output)))
