"""`tinyscale firmware`: render a flashable project for a model and a target."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from tinyscale.cli import app, reports_errors
from tinyscale.errors import ModelError


def _read_model(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ModelError(f"cannot read {path}: {exc.strerror or exc}") from None


@app.command()
@reports_errors
def firmware(
    model: Annotated[Path, typer.Argument(help="Quantized .tflite model, int8 or int16x8 with integer or float32 I/O (tinyscale's or any other).")],
    target: Annotated[str, typer.Option("--target", "-t", help="Bundled target name or a target .toml file.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Project directory to create.")],
    name: Annotated[Optional[str], typer.Option(help="Project name, a C identifier (default: from the model file).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite a non-empty DIR; generate even if the model does not fit.")] = False,
    tolerance: Annotated[Optional[int], typer.Option(min=0, max=255, help="Self-test max |device - host| per value in quantization steps (default 0 for reference kernels, 1 for optimized).")] = None,
    phi: Annotated[Optional[float], typer.Option(help="Compound-scaling phi the model was made with (recorded in the manifest).")] = None,
) -> None:
    """Render a firmware project (ESP-IDF, CMake arm-none-eabi, Arduino sketch or Pico SDK) that runs MODEL with a self-test."""
    from tinyscale.firmware import FirmwareOptions, generate_firmware  # noqa: PLC0415 - keeps --help fast
    from tinyscale.targets import load_target  # noqa: PLC0415

    board = load_target(target)
    options = FirmwareOptions(
        target=board, out_dir=output, name=name, force=force, phi=phi, tolerance=tolerance, model_file=model.name
    )
    result = generate_firmware(_read_model(model), options)
    context = result.context
    typer.echo(
        f"wrote {len(result.files)} files to {result.out_dir} ({context.build_system}, {len(context.operators)} ops, "
        f"arena {context.arena.arena_bytes:,} B in {context.arena.region}, "
        f"flash {context.predicted_flash_bytes:,} of {context.placement.flash_budget_bytes:,} B); "
        f"see {result.out_dir / 'README.md'}"
    )
