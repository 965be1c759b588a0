"""`tinyscale targets`, `scale` and `fit`."""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from tinyscale.boards.budget import Placement
from tinyscale.boards.targets import Target, load_all_targets, load_target
from tinyscale.commands.app import app, reports_errors
from tinyscale.errors import NothingFitsError, UsageError
from tinyscale.fsutil import atomic_write_bytes, atomic_write_text, check_output_dir
from tinyscale.network import arch
from tinyscale.network.arch import BASES, ScaledNetwork
from tinyscale.network.coefficients import resolve_coefficients
from tinyscale.network.scaling import (
    PAPER_ALPHA,
    PAPER_BETA,
    PAPER_GAMMA,
    Coefficients,
    format_phi,
)
from tinyscale.progress import status
from tinyscale.search.fit import (
    DEFAULT_MAX_EXTRA_MACS,
    PATCH_MODES,
    Memory,
    latency_for,
    placement_for,
)

Base = Enum("Base", {name: name for name in BASES}, type=str)  # type: ignore[misc]

# A short metavar with the choices in the help: the full choice list is wider than 80 columns.
BaseOption = Annotated[
    Base, typer.Option("--base", metavar="BASE", help=f"Base architecture to scale: {', '.join(BASES)}.")
]
ClassesOption = Annotated[int, typer.Option("--classes", min=2, help="Number of output classes.")]
ChannelsOption = Annotated[int, typer.Option("--channels", min=1, max=3, help="Input channels: 1 (grey) or 3 (RGB).")]
# None: the paper's value (or the --coefficients file's); a given value with --coefficients is refused.
AlphaOption = Annotated[
    Optional[float], typer.Option("--alpha", help=f"Depth growth per unit of phi (default {PAPER_ALPHA}).")
]
BetaOption = Annotated[
    Optional[float], typer.Option("--beta", help=f"Width growth per unit of phi (default {PAPER_BETA}).")
]
GammaOption = Annotated[
    Optional[float], typer.Option("--gamma", help=f"Resolution growth per unit of phi (default {PAPER_GAMMA}).")
]
CoefficientsOption = Annotated[
    Optional[Path],
    typer.Option("--coefficients", help="alpha, beta, gamma from a coefficients.toml (`tinyscale tune` writes one)."),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON object instead of a table.")]
TargetOption = Annotated[str, typer.Option("--target", "-t", help="Bundled target name or path to a board .toml.")]
PatchMode = Enum("PatchMode", {mode: mode for mode in PATCH_MODES}, type=str)  # type: ignore[misc]
PatchOption = Annotated[
    PatchMode,
    typer.Option("--patch", help="auto: run the first stages in patches when that fits a larger network; off: never."),
]
MaxExtraMacsOption = Annotated[
    float, typer.Option("--max-extra-macs", min=0.0, help="Extra MACs a patch schedule may cost (fraction).")
]

DEFAULT_BASE = "efficientnet-lite0"
UNPATCHED_MODEL_FILE = "model_unpatched.tflite"  # beside a patched model.tflite


def _kib(n: int) -> str:
    return f"{n / 1024:,.1f} KiB"


def _bytes(n: int) -> str:
    return f"{n:,} B ({_kib(n)})"


def _table(rows: list[tuple[str, str]]) -> str:
    width = max(len(key) for key, _ in rows)
    return "\n".join(f"{key.ljust(width)}  {value}" for key, value in rows)


@app.command()
@reports_errors
def targets(json_output: JsonOption = False) -> None:
    """List the bundled boards and their budgets."""
    boards = load_all_targets()
    if json_output:
        typer.echo(json.dumps([_target_dict(target) for target in boards], indent=2))
        return
    rows = [("target", "board", "kernels", "build", "model flash", "arena SRAM (best region)")]
    for target in boards:
        best = max(target.arena_regions, key=lambda region: region.arena_budget_bytes)
        rows.append(
            (
                target.name,
                target.board,
                target.kernel_library,
                target.build_system,
                _kib(target.flash.model_budget_bytes),
                f"{_kib(best.arena_budget_bytes)} ({best.name})",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        typer.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())


def _target_dict(target: Target) -> dict:
    return {
        "name": target.name,
        "board": target.board,
        "mcu": target.mcu,
        "cpu": target.cpu,
        "kernel_library": target.kernel_library,
        "build_system": target.build_system,
        "flash_budget_bytes": target.flash.budget_bytes,
        "flash_reserved_bytes": target.flash.reserved_bytes,
        "arena_regions": {region.name: region.arena_budget_bytes for region in target.arena_regions},
    }


def _network_rows(network: ScaledNetwork) -> list[tuple[str, str]]:
    spec = network.spec
    return [
        ("base", spec.base),
        ("phi", format_phi(network.phi)),
        (
            "multipliers",
            f"depth {network.depth_multiplier:.4f}  width {network.width_multiplier:.4f}  "
            f"resolution {network.resolution_multiplier:.4f}",
        ),
        ("input", "x".join(str(n) for n in spec.input_shape)),
        ("blocks", f"{len(spec.blocks)} (stem {spec.stem_filters}, head {spec.head_filters} channels)"),
        ("params", f"{arch.count_params(spec):,}"),
        ("MACs", f"{arch.count_macs(spec):,}"),
    ]


def _percent_of(need: int, budget: int) -> str:
    return f"{100 * need / budget:.1f}%"


def _placement_rows(placement: Placement) -> list[tuple[str, str]]:
    """Device arena, flash and SRAM with every term of each sum, so the lines add up."""
    if placement.device_arena_minimum_bytes is not None:  # the 32-bit replay sized it
        arena = (f"{placement.device_arena_bytes:,} B = 32-bit minimum {placement.device_arena_minimum_bytes:,} "
                 f"+ alignment {placement.arena_slack_bytes:,} B (uses {placement.device_arena_used_bytes:,} B; "
                 f"host arena {placement.arena_bytes:,} B)")
    else:
        arena = (f"{placement.device_arena_bytes:,} B = arena {placement.arena_bytes:,} + kernel scratch "
                 f"{placement.kernel_scratch_bytes:,} + slack {placement.arena_slack_bytes:,} B")
    return [
        ("device arena", arena),
        (
            "flash",
            f"{placement.flash_needed_bytes:,} / {placement.flash_budget_bytes:,} B "
            f"({_percent_of(placement.flash_needed_bytes, placement.flash_budget_bytes)}) = model "
            f"{placement.model_bytes:,} + reserved runtime {placement.flash_reserved_bytes:,}"
            + (f" + patch kernels {placement.extra_kernel_flash_bytes:,}" if placement.extra_kernel_flash_bytes else "")
            + f" + self-test vectors {placement.selftest_flash_bytes:,} B",
        ),
        (
            f"SRAM ({placement.arena_region})",
            f"{placement.sram_needed_bytes:,} / {placement.sram_budget_bytes:,} B "
            f"({_percent_of(placement.sram_needed_bytes, placement.sram_budget_bytes)}) = device arena "
            f"{placement.device_arena_bytes:,} + reserved {placement.sram_reserved_bytes:,} B",
        ),
        ("headroom", f"flash {placement.flash_headroom_bytes:,} B, SRAM {placement.sram_headroom_bytes:,} B"),
    ]


@dataclass(frozen=True)
class _Scaling:
    base: str
    classes: int
    channels: int
    coefficients: Coefficients


def _scaling(base: Base, classes: int, channels: int, coefficients: Coefficients) -> _Scaling:
    arch.check_classes_channels(classes, channels)
    return _Scaling(base.value, classes, channels, coefficients)


@app.command()
@reports_errors
def scale(
    phi: Annotated[float, typer.Option("--phi", help="Compound coefficient (negative shrinks).")],
    base: BaseOption = Base(DEFAULT_BASE),
    classes: ClassesOption = 10,
    channels: ChannelsOption = 3,
    alpha: AlphaOption = None,
    beta: BetaOption = None,
    gamma: GammaOption = None,
    coefficients_file: CoefficientsOption = None,
    measure: Annotated[bool, typer.Option("--measure", help="Convert to int8 and measure in TFLM too.")] = False,
    tflite: Annotated[Optional[Path], typer.Option("--tflite", help="Write the int8 model here.")] = None,
    target: Annotated[Optional[str], typer.Option("--target", "-t", help="Also check against this target.")] = None,
    patch: PatchOption = PatchMode("auto"),
    max_extra_macs: MaxExtraMacsOption = DEFAULT_MAX_EXTRA_MACS,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing --tflite file.")] = False,
    json_output: JsonOption = False,
) -> None:
    """Describe the network at a given phi with its estimated (and measured) memory.

    With --target and --patch auto (fit's default), a network that does not fit
    unpatched is checked with its best patch schedule, as fit checks it: a phi
    fit prints then gives the same answer here.
    """
    from tinyscale.fsutil import check_writable_file, refuse_clobber
    from tinyscale.graph.estimate import estimate_memory

    coefficients = resolve_coefficients(coefficients_file, alpha, beta, gamma, target)
    settings = _scaling(base, classes, channels, coefficients)
    settings.coefficients.warn_if_unbalanced()
    board = load_target(target) if target else None
    if tflite is not None:
        refuse_clobber(tflite, force, "--tflite file")
        check_writable_file(tflite)  # before the conversion
    network = arch.scale(settings.base, phi, settings.coefficients, settings.classes, settings.channels)
    spec = network.spec
    estimate = estimate_memory(spec)
    result: dict = {
        "base": spec.base,
        "phi": network.phi,
        "classes": spec.classes,
        "channels": spec.channels,
        "alpha": settings.coefficients.alpha,
        "beta": settings.coefficients.beta,
        "gamma": settings.coefficients.gamma,
        "depth_multiplier": network.depth_multiplier,
        "width_multiplier": network.width_multiplier,
        "resolution_multiplier": network.resolution_multiplier,
        "resolution": spec.resolution,
        "blocks": len(spec.blocks),
        "params": arch.count_params(spec),
        "macs": arch.count_macs(spec),
        "estimated_model_bytes": estimate.model_bytes,
        "estimated_arena_bytes": estimate.arena_bytes,
    }
    rows = _network_rows(network) + [
        ("model (estimated)", _bytes(estimate.model_bytes)),
        ("arena (estimated)", _bytes(estimate.arena_bytes)),
    ]
    memory = Memory(estimate.model_bytes, estimate.arena_bytes)
    if board is not None and patch.value == "auto":
        from tinyscale.search.fit import analytic_memory
        from tinyscale.search.patch_fit import patched_estimator

        memory = patched_estimator(board, analytic_memory, max_extra_macs)(spec)
    schedule = memory.schedule
    result.update(schedule.to_dict())
    if schedule.patched:
        rows += [
            ("patch", f"{schedule.grid[0]}x{schedule.grid[1]} grid up to {schedule.split_tensor} "
                      f"(+{100 * schedule.macs_overhead:.1f}% MACs), as fit --patch auto chooses"),
            ("model (patched, estimated)", _bytes(memory.model_bytes)),
            ("arena (patched, estimated)", _bytes(memory.arena_bytes)),
        ]
    model_bytes, arena_bytes = memory.model_bytes, memory.arena_bytes
    if measure or tflite is not None:
        from tinyscale.search.fit import measured_memory
        from tinyscale.search.patch_fit import measured_patched_memory

        with status(enabled=not json_output) as report:
            measured = measured_patched_memory(spec, schedule, report) if schedule.patched \
                else measured_memory(spec, report)
        model_bytes, arena_bytes = measured.model_bytes, measured.arena_bytes
        memory = measured
        result.update(measured_model_bytes=model_bytes, measured_arena_bytes=arena_bytes)
        rows += [("model (measured)", _bytes(model_bytes)), ("arena (measured)", _bytes(arena_bytes))]
        if tflite is not None:
            atomic_write_bytes(tflite, measured.tflite)
            rows.append(("wrote", str(tflite)))
    result["model_bytes"], result["arena_bytes"] = model_bytes, arena_bytes
    if board is not None:
        placement = placement_for(board, spec, memory)
        latency = latency_for(board, spec, memory)
        result.update(target=board.name, **placement.to_dict(),
                      latency_ms=None if latency is None else round(latency.latency_ms, 4))
        rows += [("target", board.name)] + _placement_rows(placement)
        rows.append(("latency", latency_text(latency, board)))
        rows.append(("fits", "yes" if placement.fits else f"no: {placement.describe_shortfall()}"))
    typer.echo(json.dumps(result, indent=2) if json_output else _table(rows))
    if board is not None:
        placement.require_fits(f"the network at phi {format_phi(network.phi)}", board.name)  # exit 3, report printed


@app.command()
@reports_errors
def fit(
    target: TargetOption,
    base: BaseOption = Base(DEFAULT_BASE),
    classes: ClassesOption = 10,
    channels: ChannelsOption = 3,
    alpha: AlphaOption = None,
    beta: BetaOption = None,
    gamma: GammaOption = None,
    coefficients_file: CoefficientsOption = None,
    verify: Annotated[
        bool, typer.Option("--verify/--no-verify", help="Confirm the answer by a real int8 conversion in TFLM.")
    ] = True,
    prove: Annotated[
        bool, typer.Option("--prove", help="Also convert and measure next_phi's network to show it does not fit.")
    ] = False,
    out: Annotated[
        Optional[Path], typer.Option("--out", "-o", help="Write model.tflite and fit.json into this directory.")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Write into a non-empty --out directory.")] = False,
    patch: PatchOption = PatchMode("auto"),
    max_extra_macs: MaxExtraMacsOption = DEFAULT_MAX_EXTRA_MACS,
    max_latency_ms: Annotated[
        Optional[float],
        typer.Option("--max-latency-ms", help="Also fit this predicted latency per inference (ms, at the board's clock)."),
    ] = None,
    json_output: JsonOption = False,
) -> None:
    """Find the largest phi whose int8 TFLite Micro model fits the target's flash and SRAM (and --max-latency-ms)."""
    from tinyscale.search.fit import FitRequest, check_latency_budget
    from tinyscale.search.fit import fit as run_fit

    coefficients = resolve_coefficients(coefficients_file, alpha, beta, gamma, target)
    settings = _scaling(base, classes, channels, coefficients)
    board = load_target(target)
    request = FitRequest(board, settings.base, settings.classes, settings.channels, settings.coefficients,
                         max_latency_ms)
    check_latency_budget(request)  # before --out is checked or anything runs
    if out is not None:
        check_output_dir(out, force)
    if out is not None and not verify:
        raise UsageError("--out writes the verified model; it cannot be combined with --no-verify")
    try:
        with status(enabled=not json_output) as report:
            result = run_fit(request, verify=verify, prove_next=prove, progress=report, patch=patch.value,
                             max_extra_macs=max_extra_macs)
    except NothingFitsError as exc:
        if json_output:  # the JSON still says what the smallest network needs; exit 3 follows
            typer.echo(json.dumps(exc.report, indent=2))
        raise
    data = result.to_dict()
    if out is not None and result.measured is not None:
        if result.measured.unpatched_tflite:
            atomic_write_bytes(out / UNPATCHED_MODEL_FILE, result.measured.unpatched_tflite)
        atomic_write_bytes(out / "model.tflite", result.measured.tflite)
        atomic_write_text(out / "fit.json", json.dumps(data, indent=2) + "\n")
    if json_output:
        typer.echo(json.dumps(data, indent=2))
        return
    typer.echo(_fit_table(result, data, out))


def _fit_table(result, data: dict, out: Optional[Path]) -> str:
    source = "measured in TFLM" if result.verified else "estimated"
    rows = [("target", f"{data['target']} ({result.request.target.board})")]
    rows += _network_rows(result.network)
    rows += [
        ("phi interval", f"[{format_phi(result.phi_low)}, {format_phi(result.phi_high)}) gives this network"),
        (f"model ({source})", _bytes(data["model_bytes"])),
        (f"arena ({source})", _bytes(data["arena_bytes"])),
    ]
    rows += _placement_rows(result.placement)
    rows.append(("latency", latency_text(result.latency, result.request.target, result.request.max_latency_ms)))
    rows += _next_rows(result)
    rows.append(("binding", result.binding))
    rows += _patch_rows(result, data)
    rows.append(("verified", "yes" if result.verified else "no (--no-verify)"))
    if out is not None and result.verified:
        written = [out / "model.tflite", out / "fit.json"]
        if result.measured.unpatched_tflite:
            written.insert(1, out / UNPATCHED_MODEL_FILE)
        rows.append(("wrote", ", ".join(str(path) for path in written)))
    return _table(rows)


def _patch_rows(result, data: dict) -> list[tuple[str, str]]:
    """The schedule, what it cost (MACs, flash) and gained (phi over the unpatched answer)."""
    schedule = result.schedule
    unpatched = "nothing fits" if result.phi_unpatched is None else format_phi(result.phi_unpatched)
    if not schedule.patched:
        return [("patch", f"none (unpatched answer phi {unpatched})")]
    rows, cols = schedule.grid
    return [
        ("patch", f"{rows}x{cols} grid up to {schedule.split_tensor}"),
        ("patch cost", f"+{100 * schedule.macs_overhead:.1f}% MACs ({data['macs'] * (1 + schedule.macs_overhead):,.0f})"),
        ("patch gain", f"phi {format_phi(result.phi)} instead of {unpatched} unpatched"),
    ]


def _next_rows(result) -> list[tuple[str, str]]:
    """The next network's figures and its need against each budget: why phi stops here."""
    if result.next_phi is None or result.next_placement is None:
        return [("next phi", "none (search ceiling)")]
    placement = result.next_placement
    spec = result.request.spec(result.next_phi)
    source = "measured in TFLM by --prove" if result.next_measured is not None else "estimated; --prove measures it"

    def verdict(need: int, budget: int) -> str:
        return f"{need:,} / {budget:,} B ({_percent_of(need, budget)}), " + (
            "fits" if need <= budget else f"over by {need - budget:,} B"
        )

    return [
        ("next phi", f"{format_phi(result.next_phi)} (does not fit: {result.binding})"),
        (
            "next network",
            f"{spec.resolution} px, {len(spec.blocks)} blocks; model {placement.model_bytes:,} B, arena "
            f"{placement.arena_bytes:,} B ({source})",
        ),
        ("next flash", verdict(placement.flash_needed_bytes, placement.flash_budget_bytes)),
        (
            f"next SRAM ({placement.arena_region})",
            verdict(placement.sram_needed_bytes, placement.sram_budget_bytes),
        ),
        ("next latency", latency_text(result.next_latency, result.request.target, result.request.max_latency_ms)),
    ]


def latency_text(latency, target: Target, budget_ms: Optional[float] = None) -> str:
    """The prediction (tinyscale.graph.latency.describe) and, with a budget, whether it fits."""
    from tinyscale.graph.latency import describe

    text = describe(latency, target)
    if latency is not None and budget_ms is not None:
        text += f"; budget {budget_ms:g} ms: " + ("over" if latency.latency_ms > budget_ms else "fits")
    return text
