"""Render a flashable firmware project for one quantized model and one target.

Data flows one way: model bytes + target -> checks (operators, fit) ->
host-measured arena and self-test vectors -> one :class:`ProjectContext` ->
Jinja templates (``templates/<build system>/`` at the project root,
``templates/common/`` and the shared ``firmware/`` sources in the source
directory) -> a temporary directory beside the output, renamed into place.
Nothing is written when any step fails.

Template rules (after copier): only ``*.jinja`` files are rendered (the
suffix is dropped), everything else is copied byte for byte; undefined
variables are errors (``StrictUndefined``); a template that renders to
whitespace only is not written, which is how optional files such as an
ESP-IDF ``partitions.csv`` appear only when needed; ``{{ ... }}`` in a file
or folder name is rendered too (an Arduino sketch folder and its ``.ino``
carry the project name).

The context's types are :mod:`tinyscale.project.context`, the per-board parts
of it :mod:`tinyscale.project.board_glue`, the embedded test vectors
:mod:`tinyscale.project.selftest`; this module checks, plans the arena, builds
the context, renders and publishes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np

from tinyscale import __version__
from tinyscale.boards.budget import (
    DEVICE_MODEL_NOTE,
    DEVICE_MODEL_RULE,
    Placement,
    place_model,
)
from tinyscale.boards.kernels import (
    MARGIN_NOTE,
    check_kernel_support,
)
from tinyscale.boards.targets import Target
from tinyscale.errors import (
    DoesNotFitError,
    ModelError,
    OutputExistsError,
    TemplateError,
    UsageError,
)
from tinyscale.fsutil import (
    TreeChanges,
    check_output_dir,
    output_error,
    publish_tree,
    safe_relative,
    staging_directory,
)
from tinyscale.graph.latency import LatencyEstimate, predict_for_target
from tinyscale.graph.tflite_model import (
    ModelInfo,
    check_full_integer,
    input_quantization,
    output_quantization,
    read_model,
)
from tinyscale.project.board_glue import (
    TFLM_LIBRARIES,
    arduino_context,
    cmake_arm_context,
    esp_idf_context,
    pico_sdk_context,
)
from tinyscale.project.context import (
    ArenaPlan,
    FirmwareOptions,
    FirmwareResult,
    OpEntry,
    ProjectContext,
    _c_array_lines,
    check_identifier,
    default_project_name,
)
from tinyscale.project.selftest import (
    SELFTEST_SEED,
    host_expected_output,
    output_tolerance,
    selftest_input,
    selftest_tensor,
)
from tinyscale.resources import data_dir

log = logging.getLogger(__name__)

TEMPLATE_BUILD_SYSTEMS = ("cmake-arm", "esp-idf", "arduino", "pico-sdk")
# Build systems whose projects can print a per-operator profile (`firmware --profile`).
PROFILE_BUILD_SYSTEMS = ("cmake-arm",)
# Where each build system keeps its sources (firmware/ and templates/common/ go there);
# {name} is the project name. An Arduino sketch folder is named like its .ino, and the
# builder compiles a sketch's src/ subfolder recursively (Arduino sketch specification).
SOURCE_DIRS = {"cmake-arm": "src", "esp-idf": "main", "arduino": "{name}/src", "pico-sdk": "src"}
# The Arduino builder compiles .c, .cpp and .S sketch files (the sketch specification;
# arduino-cli before 1.x and the 1.x IDE skip .cc), so the shared runner is copied as .cpp there.
SOURCE_SUFFIXES = {"arduino": {".cc": ".cpp"}}
MODEL_BYTES_PER_LINE = 12
# Model data is aligned like TFLM's own examples: flatbuffer tables may hold
# 8- and 16-byte scalars that are read in place.
MODEL_ALIGNMENT = 16
MANIFEST_FILE = "manifest.json"

# The arena margin (kernel-library scratch, 32-bit slack) is tinyscale.boards.kernels'
# rule, shared with the fitter so that fit and firmware agree to the byte.
# Measured on mps2-an386 under QEMU (tests/test_firmware_integration.py,
# benchmarks/firmware_sizes.py): the device's arena_used_bytes() was 17,716 B
# (reference) and 17,780 B (CMSIS-NN) against a host minimum of 19,624 B for
# the `tiny` base at phi=0, and 46,356 / 46,404 B against 49,088 B at phi=2.

# BuiltinOperator name -> TFLM MicroMutableOpResolver method (tflite-micro
# micro_mutable_op_resolver.h). Only builtins: custom operators are refused.
OP_RESOLVER_METHODS = {
    "ABS": "AddAbs", "ADD": "AddAdd", "ADD_N": "AddAddN", "ARG_MAX": "AddArgMax", "ARG_MIN": "AddArgMin",
    "ASSIGN_VARIABLE": "AddAssignVariable", "AVERAGE_POOL_2D": "AddAveragePool2D",
    "BATCH_MATMUL": "AddBatchMatMul", "BATCH_TO_SPACE_ND": "AddBatchToSpaceNd",
    "BROADCAST_ARGS": "AddBroadcastArgs", "BROADCAST_TO": "AddBroadcastTo", "CALL_ONCE": "AddCallOnce",
    "CAST": "AddCast", "CEIL": "AddCeil", "CONCATENATION": "AddConcatenation", "CONV_2D": "AddConv2D",
    "COS": "AddCos", "CUMSUM": "AddCumSum", "DEPTH_TO_SPACE": "AddDepthToSpace",
    "DEPTHWISE_CONV_2D": "AddDepthwiseConv2D", "DEQUANTIZE": "AddDequantize", "DIV": "AddDiv",
    "DYNAMIC_UPDATE_SLICE": "AddDynamicUpdateSlice", "EMBEDDING_LOOKUP": "AddEmbeddingLookup",
    "ELU": "AddElu", "EQUAL": "AddEqual", "EXP": "AddExp", "EXPAND_DIMS": "AddExpandDims",
    "FILL": "AddFill", "FLOOR": "AddFloor", "FLOOR_DIV": "AddFloorDiv", "FLOOR_MOD": "AddFloorMod",
    "FULLY_CONNECTED": "AddFullyConnected", "GATHER": "AddGather", "GATHER_ND": "AddGatherNd",
    "GREATER": "AddGreater", "GREATER_EQUAL": "AddGreaterEqual", "HARD_SWISH": "AddHardSwish",
    "IF": "AddIf", "L2_NORMALIZATION": "AddL2Normalization", "L2_POOL_2D": "AddL2Pool2D",
    "LEAKY_RELU": "AddLeakyRelu", "LESS": "AddLess", "LESS_EQUAL": "AddLessEqual", "LOG": "AddLog",
    "LOGICAL_AND": "AddLogicalAnd", "LOGICAL_NOT": "AddLogicalNot", "LOGICAL_OR": "AddLogicalOr",
    "LOGISTIC": "AddLogistic", "LOG_SOFTMAX": "AddLogSoftmax", "MAXIMUM": "AddMaximum",
    "MAX_POOL_2D": "AddMaxPool2D", "MIRROR_PAD": "AddMirrorPad", "MEAN": "AddMean",
    "MINIMUM": "AddMinimum", "MUL": "AddMul", "NEG": "AddNeg", "NOT_EQUAL": "AddNotEqual",
    "PACK": "AddPack", "PAD": "AddPad", "PADV2": "AddPadV2", "PRELU": "AddPrelu",
    "QUANTIZE": "AddQuantize", "READ_VARIABLE": "AddReadVariable", "REDUCE_ALL": "AddReduceAll",
    "REDUCE_MAX": "AddReduceMax", "REDUCE_MIN": "AddReduceMin", "RELU": "AddRelu", "RELU6": "AddRelu6",
    "RESHAPE": "AddReshape", "RESIZE_BILINEAR": "AddResizeBilinear",
    "RESIZE_NEAREST_NEIGHBOR": "AddResizeNearestNeighbor", "REVERSE_V2": "AddReverseV2",
    "ROUND": "AddRound", "RSQRT": "AddRsqrt", "SELECT_V2": "AddSelectV2", "SHAPE": "AddShape",
    "SIN": "AddSin", "SLICE": "AddSlice", "SOFTMAX": "AddSoftmax", "SPACE_TO_BATCH_ND": "AddSpaceToBatchNd",
    "SPACE_TO_DEPTH": "AddSpaceToDepth", "SPLIT": "AddSplit", "SPLIT_V": "AddSplitV",
    "SQUEEZE": "AddSqueeze", "SQRT": "AddSqrt", "SQUARE": "AddSquare",
    "SQUARED_DIFFERENCE": "AddSquaredDifference", "STRIDED_SLICE": "AddStridedSlice", "SUB": "AddSub",
    "SUM": "AddSum", "SVDF": "AddSvdf", "TANH": "AddTanh", "TRANSPOSE_CONV": "AddTransposeConv",
    "TRANSPOSE": "AddTranspose", "UNPACK": "AddUnpack",
    "UNIDIRECTIONAL_SEQUENCE_LSTM": "AddUnidirectionalSequenceLSTM", "VAR_HANDLE": "AddVarHandle",
    "WHILE": "AddWhile", "ZEROS_LIKE": "AddZerosLike",
}


# ---------------------------------------------------------------------------
# Checks


def check_build_system(target: Target) -> None:
    if target.build_system not in TEMPLATE_BUILD_SYSTEMS:
        raise TemplateError(
            f"target {target.name!r} uses build system {target.build_system!r}, which has no firmware "
            f"template yet (templates exist for {', '.join(TEMPLATE_BUILD_SYSTEMS)})"
        )


def resolver_ops(info: ModelInfo) -> tuple[OpEntry, ...]:
    """The model's distinct operators with their resolver methods; ModelError for any TFLM lacks."""
    entries = []
    for op in info.operators:
        if op.custom:
            raise ModelError(f"custom operator {op.name!r} has no TFLM MicroMutableOpResolver Add method")
        method = OP_RESOLVER_METHODS.get(op.name)
        if method is None:
            raise ModelError(f"operator {op.name} has no TFLM MicroMutableOpResolver Add method")
        entries.append(OpEntry(op.name, method))
    if not entries:
        raise ModelError("the model has no operators")
    return tuple(dict.fromkeys(entries))


def check_profile(profile: bool, build_system: str) -> None:
    """The per-operator profile needs the project's own TFLM timer hooks, which only cmake-arm renders."""
    if profile and build_system not in PROFILE_BUILD_SYSTEMS:
        raise UsageError(f"--profile is for {', '.join(PROFILE_BUILD_SYSTEMS)} projects; this target builds with {build_system}")


def check_library_ops(operators: tuple[OpEntry, ...], build_system: str) -> None:
    """ModelError for an operator the build system's packaged TFLM snapshot cannot register."""
    library = TFLM_LIBRARIES.get(build_system)
    if library is None:
        return  # a TFLM tree or component recent enough for every OP_RESOLVER_METHODS entry
    for op in operators:
        if op.name in library.missing_ops:
            raise ModelError(
                f"operator {op.name} is not in {library.name} ({library.url} at {library.short_commit}), "
                f"the TFLite Micro that {build_system} projects build with"
            )


def check_io(info: ModelInfo) -> None:
    # The self-test feeds one input and checks one output, as the host runner
    # (tinyscale.simulation.tflm.run_model) does; the model itself must pass simulate's rule.
    if len(info.inputs) != 1 or len(info.outputs) != 1:
        raise ModelError(
            f"firmware needs a model with one input and one output, got {len(info.inputs)} and {len(info.outputs)}"
        )
    check_full_integer(info)


# ---------------------------------------------------------------------------
# Memory


def measure_arena_bytes(model: bytes) -> int:
    """The host interpreter's minimal arena for the model (bisection in TFLM worker processes)."""
    from tinyscale.simulation import tflm  # noqa: PLC0415 - starts a TFLM worker process

    return tflm.measure_arena(model).arena_bytes


def plan_arena(info: ModelInfo, measured_bytes: int, target: Target) -> tuple[ArenaPlan, Placement]:
    """The firmware's arena: budget.place_model's rule (fit's), from the file's graph."""
    placement = place_model(target, info.model, info.size_bytes, measured_bytes, info.selftest_bytes)
    arena = placement.device_arena_bytes
    region = next(r for r in target.memory if r.name == placement.arena_region)
    plan = ArenaPlan(measured_bytes, arena - measured_bytes, arena, region.name, region.kind,
                     placement.device_arena_used_bytes, placement.arena_rule)
    return plan, placement


def check_fit(placement: Placement, target: Target, allow_overflow: bool) -> None:
    """Refuse a model that exceeds the target, with the numbers (unless allowed).

    The placement is the fitter's (same arena margin, same self-test flash), so
    a model `fit` accepts is never refused here.
    """
    if placement.fits:
        return
    message = f"the model does not fit {target.name}: {placement.describe_shortfall()}"
    if not allow_overflow:
        raise DoesNotFitError(f"{message} (`tinyscale firmware --allow-overflow` generates the project anyway)")
    log.warning("%s; generating anyway (--allow-overflow)", message)


def model_lines(model: bytes) -> tuple[str, ...]:
    return _c_array_lines([f"0x{b:02x}" for b in model], MODEL_BYTES_PER_LINE)


# ---------------------------------------------------------------------------
# Building the context


def default_tolerance(kernel_library: str) -> int:
    # Reference kernels run the same integer code as the host interpreter: bit-exact.
    # Optimized kernels may round a requantization differently by one step.
    return 0 if kernel_library == "reference" else 1


def build_context(model: bytes, options: FirmwareOptions, *, measured_arena_bytes: int | None = None,
                  expected: np.ndarray | None = None) -> ProjectContext:
    """Check everything and compute the context; measures on the host unless given the figures."""
    target = options.target
    check_build_system(target)
    check_profile(options.profile, target.build_system)
    info = read_model(model)
    operators = resolver_ops(info)
    check_library_ops(operators, target.build_system)
    check_io(info)
    check_kernel_support(info, target.kernel_library, target.name)
    name = check_identifier(options.name or default_project_name(options.model_file), "project name")
    # Board glue that needs no measurement is checked first, so a bad target fails fast.
    arduino = arduino_context(target, name) if target.build_system == "arduino" else None
    pico_sdk = pico_sdk_context(target) if target.build_system == "pico-sdk" else None

    measured = measured_arena_bytes if measured_arena_bytes is not None else measure_arena_bytes(model)
    arena, placement = plan_arena(info, measured, target)
    image_bytes = placement.flash_needed_bytes
    fits = placement.fits
    check_fit(placement, target, options.allow_overflow)

    input_io, output_io = input_quantization(info), output_quantization(info)
    inputs = selftest_input(input_io)
    if expected is None:
        expected = host_expected_output(model, inputs, arena.measured_bytes)  # the host build needs its own minimum
    tolerance = options.tolerance if options.tolerance is not None else default_tolerance(target.kernel_library)

    return ProjectContext(
        project_name=name,
        tinyscale_version=__version__,
        target=target,
        build_system=target.build_system,
        source_dir=SOURCE_DIRS[target.build_system].format(name=name),
        phi=options.phi,
        model_file=Path(options.model_file).name,
        model_sha256=hashlib.sha256(model).hexdigest(),
        model_size_bytes=len(model),
        model_alignment=MODEL_ALIGNMENT,
        model_lines=model_lines(model),
        operators=operators,
        inputs=(selftest_tensor(input_io, inputs),),
        expected=(selftest_tensor(output_io, expected, output_tolerance(output_io, tolerance)),),
        tolerance=tolerance,
        arena=arena,
        placement=placement,
        overflow_allowed=options.allow_overflow and not fits,
        cmake_arm=cmake_arm_context(target, arena) if target.build_system == "cmake-arm" else None,
        esp_idf=esp_idf_context(target, arena, image_bytes) if target.build_system == "esp-idf" else None,
        arduino=arduino,
        pico_sdk=pico_sdk,
        regenerate_command=_regenerate_command(options, name),
        profile=options.profile,
        latency=predict_for_target(info.model, target),
    )


def check_board_glue(target: Target) -> None:
    """Make the board glue no model affects (console, pins, chip, board package), or raise
    what `firmware` would: `build` calls it before spending its training time."""
    check_build_system(target)
    region = target.arena_regions[0]
    placeholder = ArenaPlan(0, 0, 0, region.name, region.kind)  # sizes do not matter to the glue
    contexts = {
        "cmake-arm": lambda: cmake_arm_context(target, placeholder),
        "esp-idf": lambda: esp_idf_context(target, placeholder, 0),
        "arduino": lambda: arduino_context(target, "model"),
        "pico-sdk": lambda: pico_sdk_context(target),
    }
    contexts[target.build_system]()


def _regenerate_command(options: FirmwareOptions, name: str) -> str:
    target = options.target
    bundled = target.path is None or target.path.resolve().parent == data_dir("targets").resolve()
    # A user's target file is named, not located: absolute paths would make output machine-dependent.
    parts = ["tinyscale firmware", Path(options.model_file).name,
             "--target", target.name if bundled else target.path.name, "--name", name, "-o", "DIR"]
    if options.tolerance is not None:
        parts += ["--tolerance", str(options.tolerance)]
    if options.phi is not None:
        parts += ["--phi", repr(options.phi)]
    if options.allow_overflow:
        parts.append("--allow-overflow")
    if options.profile:
        parts.append("--profile")
    return " ".join(parts)


def manifest_data(context: ProjectContext, files: list[str], hashes: dict[str, str]) -> dict:
    """The project's manifest: enough to regenerate it, audit its sizing, and know its files.

    `files` (every generated path, manifest.json included) is what a later
    `--force` may replace or remove; anything else in the folder is the user's.
    `hashes` (every generated file but the manifest itself) tells a later
    `--force` which of them the user has edited since, so their edits are not
    overwritten silently.
    """
    return {
        "tinyscale_version": context.tinyscale_version,
        "target": context.target.name,
        "build_system": context.build_system,
        "kernel_library": context.target.kernel_library,
        "phi": context.phi,
        "model": {"file": context.model_file, "sha256": context.model_sha256, "size_bytes": context.model_size_bytes},
        "options": {"name": context.project_name, "tolerance": context.tolerance, "allow_overflow": context.overflow_allowed,
                    "selftest_seed": SELFTEST_SEED, "profile": context.profile},
        "arena": {**asdict(context.arena),
                  "margin_rule": DEVICE_MODEL_NOTE if context.arena.rule == DEVICE_MODEL_RULE else MARGIN_NOTE},
        "predicted": {
            "flash_needed_bytes": context.predicted_flash_bytes,
            "selftest_flash_bytes": context.selftest_flash_bytes,
            "flash_budget_bytes": context.placement.flash_budget_bytes,
            "sram_needed_bytes": context.placement.sram_needed_bytes,
            "sram_budget_bytes": context.placement.sram_budget_bytes,
            "fits": context.fits,
            **latency_manifest(context.latency),
        },
        "operators": [op.name for op in context.operators],
        "regenerate": context.regenerate_command,
        "files": sorted(files),
        "file_sha256": dict(sorted(hashes.items())),
    }


def latency_manifest(latency: LatencyEstimate | None) -> dict:
    """The manifest's predicted latency (null without a cost table for the core)."""
    if latency is None:
        return {"latency_ms": None}
    return {
        "latency_ms": round(latency.latency_ms, 4),
        "latency_cycles": round(latency.cycles),
        "latency_clock_hz": latency.clock_hz,
        "latency_cost_table": f"{latency.table.cpu}-{latency.table.kernel_library}",
        "latency_estimate": latency.table.estimate,
        "latency_unmodelled_ops": list(latency.unmodelled),
    }


def manifest(context: ProjectContext, files: list[str], hashes: dict[str, str]) -> str:
    return json.dumps(manifest_data(context, files, hashes), indent=2, sort_keys=True) + "\n"


def _sha256_file(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# ---------------------------------------------------------------------------
# Rendering


def templates_root() -> Path:
    return data_dir("templates")


def firmware_sources_dir() -> Path:
    return data_dir("firmware")


def _environment(root: Path):
    import jinja2  # noqa: PLC0415 - only rendering needs it

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(root)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )
    env.filters["hex"] = lambda value, width=8: f"0x{value:0{width}X}"
    return env


def _files(directory: Path) -> list[Path]:
    # Dotfiles (.gitkeep) and caches are repository plumbing, not project files.
    return sorted(
        p for p in directory.rglob("*")
        if p.is_file() and not any(part.startswith(".") or part == "__pycache__" for part in p.relative_to(directory).parts)
    )


def _output_path(env, relative: Path, context: ProjectContext, suffixes: dict[str, str]) -> Path:
    """A template's path in the project: `{{ ... }}` in a file or folder name is rendered
    (an Arduino sketch is named after the project), then the suffix is mapped."""
    parts = []
    for part in relative.parts:
        if "{{" in part:
            part = env.from_string(part).render(ctx=context)
            if part in ("", ".", "..") or "/" in part or "\\" in part:
                raise TemplateError(f"template path {relative} renders to an unusable name {part!r}")
        parts.append(part)
    out = Path(*parts)
    if out.suffix == ".jinja":
        out = out.with_suffix("")
    return out.with_suffix(suffixes.get(out.suffix, out.suffix))


def render_tree(source: Path, destination: Path, context: ProjectContext,
                suffixes: dict[str, str] | None = None) -> list[str]:
    """Render `source` into `destination`; returns the written paths relative to `destination`.

    `suffixes` maps a file suffix to the one it gets in the project (".cc" -> ".cpp").
    """
    import jinja2  # noqa: PLC0415

    env = _environment(source)
    written = []
    for path in _files(source):
        relative = path.relative_to(source)
        try:
            out = destination / _output_path(env, relative, context, suffixes or {})
            text = env.get_template(relative.as_posix()).render(ctx=context) if path.suffix == ".jinja" else None
        except jinja2.TemplateError as exc:
            raise TemplateError(f"template {relative}: {exc}") from None
        if text is not None and not text.strip():
            continue  # optional file not needed for this project
        out.parent.mkdir(parents=True, exist_ok=True)
        if text is None:
            shutil.copyfile(path, out)
        else:
            out.write_text(text, encoding="utf-8")
        written.append(out.relative_to(destination).as_posix())
    return written


def render_project(context: ProjectContext, destination: Path) -> list[str]:
    """Write the whole project into the (empty) staging directory `destination`."""
    templates = templates_root()
    system_dir = templates / context.build_system
    if not system_dir.is_dir():
        raise TemplateError(f"templates for {context.build_system} are missing ({system_dir})")
    sources = destination / context.source_dir
    suffixes = SOURCE_SUFFIXES.get(context.build_system)
    written = render_tree(system_dir, destination, context)
    for shared in (templates / "common", firmware_sources_dir()):
        written += [f"{context.source_dir}/{p}" for p in render_tree(shared, sources, context, suffixes)]
    hashes = {name: _sha256_file(destination / name) for name in written}
    written = sorted([*written, MANIFEST_FILE])
    (destination / MANIFEST_FILE).write_text(manifest(context, written, hashes), encoding="utf-8")
    return written


def _previous_manifest(out_dir: Path) -> dict:
    try:
        data = json.loads((Path(out_dir) / MANIFEST_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def generated_files(out_dir: Path) -> set[str]:
    """The files the project's previous manifest.json says tinyscale generated (none if unknown).

    Without that list (no project yet, an older tinyscale, a foreign file) nothing
    is removed: only the files the new render writes are replaced.
    """
    recorded = _previous_manifest(out_dir).get("files", [])
    return safe_relative(recorded) if isinstance(recorded, list) else set()


def edited_files(out_dir: Path) -> list[str]:
    """Generated files whose content differs from what the previous manifest recorded: the user's edits."""
    recorded = _previous_manifest(out_dir).get("file_sha256")
    if not isinstance(recorded, dict):
        return []  # an older manifest: nothing to compare with
    edited = []
    for name in sorted(safe_relative(recorded)):
        path = Path(out_dir) / name
        if path.is_file() and not path.is_symlink() and _sha256_file(path) != recorded[name]:
            edited.append(name)
    return edited


def check_edits(out_dir: Path, overwrite_edits: bool) -> None:
    """Refuse to regenerate over generated files the user has edited, unless told to (exit 4)."""
    edited = [] if overwrite_edits else edited_files(out_dir)
    if not edited:
        return
    if len(edited) == 1:
        what = f"{Path(out_dir) / edited[0]} was edited since tinyscale generated it"
    else:
        names = ", ".join(edited[:3]) + (f" and {len(edited) - 3} more" if len(edited) > 3 else "")
        what = f"{len(edited)} generated files in {out_dir} were edited since tinyscale generated them ({names})"
    raise OutputExistsError(
        f"{what}; regenerating would lose the edits: move them into a file of your own (kept on regeneration) "
        "or pass --overwrite-edits"
    )


def write_project(context: ProjectContext, out_dir: Path, force: bool, overwrite_edits: bool = False) -> TreeChanges:
    """Render the project beside (new folder) or inside (existing folder) `out_dir`, then publish it.

    Rendering finishes before anything in `out_dir` changes; an existing project
    is updated file by file and keeps the user's own files (see publish_tree).
    """
    out_dir = Path(out_dir)
    check_output_dir(out_dir, force)
    check_edits(out_dir, overwrite_edits)
    previous = generated_files(out_dir)
    staged = staging_directory(out_dir)
    try:
        render_project(context, staged)
        return publish_tree(staged, out_dir, previous)
    except BaseException as exc:
        shutil.rmtree(staged, ignore_errors=True)
        if isinstance(exc, OSError):
            raise output_error(out_dir, exc) from None
        raise


def generate_firmware(model: bytes, options: FirmwareOptions) -> FirmwareResult:
    """Check, measure and render: the whole `tinyscale firmware` command as a function."""
    check_build_system(options.target)
    check_output_dir(Path(options.out_dir), options.force)  # fail before the slow measurements
    check_edits(Path(options.out_dir), options.overwrite_edits)
    context = build_context(model, options)
    changes = write_project(context, Path(options.out_dir), options.force, options.overwrite_edits)
    log.info("wrote %d files to %s", len(changes.written), options.out_dir)
    return FirmwareResult(Path(options.out_dir), context, changes)
