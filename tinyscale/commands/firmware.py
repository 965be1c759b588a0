"""`tinyscale firmware`: render a flashable project for a model and a target."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from tinyscale.commands.app import app, reports_errors
from tinyscale.commands.core import JsonOption
from tinyscale.commands.wording import plural
from tinyscale.errors import ModelError
from tinyscale.progress import status


def _read_model(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ModelError(f"cannot read {path}: {exc.strerror or exc}") from None


def _result_dict(result) -> dict:
    """The --json object: the manifest (arena, flash, ops) plus the placement and what changed on disk."""
    from tinyscale.project.render import MANIFEST_FILE  # noqa: PLC0415

    context = result.context
    return {
        **json.loads((result.out_dir / MANIFEST_FILE).read_text(encoding="utf-8")),  # just written: the one record
        "out_dir": str(result.out_dir),
        "placement": context.placement.to_dict(),
        **result.changes.to_dict(),
    }


def _result_line(result) -> str:
    context = result.context
    summary = (
        f"wrote {plural(len(result.changes.written), 'file')} to {result.out_dir} ({context.build_system}, "
        f"{plural(len(context.operators), 'op')}, "
        f"arena {context.arena.arena_bytes:,} B in {context.arena.region}, "
        f"flash {context.predicted_flash_bytes:,} of {context.placement.flash_budget_bytes:,} B); "
        f"see {result.out_dir / 'README.md'}"
    )
    return "\n".join([summary, *result.changes.describe()])


@app.command()
@reports_errors
def firmware(
    model: Annotated[Path, typer.Argument(help="Quantized .tflite model, int8 or int16x8 with integer or float32 I/O (tinyscale's or any other).")],
    target: Annotated[str, typer.Option("--target", "-t", help="Bundled target name or a target .toml file.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Project directory to create or update.")],
    name: Annotated[Optional[str], typer.Option(help="Project name, a C identifier (default: from the model file).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Update a non-empty DIR: replace the files tinyscale generated there, keep your own.")] = False,
    allow_overflow: Annotated[bool, typer.Option("--allow-overflow", help="Generate the project even if the model does not fit the target.")] = False,
    overwrite_edits: Annotated[bool, typer.Option("--overwrite-edits", help="With --force, also replace generated files you have edited since.")] = False,
    tolerance: Annotated[Optional[int], typer.Option(min=0, max=255, help="Self-test max |device - host| per value in quantization steps (default 0 for reference kernels, 1 for optimized).")] = None,
    phi: Annotated[Optional[float], typer.Option(help="Compound-scaling phi the model was made with (recorded in the manifest).")] = None,
    profile: Annotated[bool, typer.Option("--profile", help="cmake-arm: the self-test also prints each operator's timer ticks (TFLM profiler).")] = False,
    json_output: JsonOption = False,
) -> None:
    """Render a firmware project (ESP-IDF, CMake arm-none-eabi, Arduino sketch or Pico SDK) that runs MODEL with a self-test."""
    from tinyscale.boards.targets import load_target  # noqa: PLC0415
    from tinyscale.project.context import FirmwareOptions  # noqa: PLC0415 - keeps --help fast
    from tinyscale.project.render import generate_firmware  # noqa: PLC0415

    board = load_target(target)
    options = FirmwareOptions(
        target=board, out_dir=output, name=name, force=force, allow_overflow=allow_overflow,
        overwrite_edits=overwrite_edits, phi=phi,
        tolerance=tolerance, model_file=model.name, profile=profile,
    )
    with status(enabled=not json_output) as report:
        report("measuring the arena and the self-test outputs in TFLM on the host")
        result = generate_firmware(_read_model(model), options)
    typer.echo(json.dumps(_result_dict(result), indent=2) if json_output else _result_line(result))
