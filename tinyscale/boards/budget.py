"""Does a model of given flash and arena size fit a target, and where?

Pure arithmetic on a :class:`Target`: shared by the fitter, `simulate --target`
and firmware generation so all three agree to the byte.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from tinyscale.boards.kernels import (
    ARENA_ALIGNMENT,
    OpShapes,
    align_up,
    arena_margin_bytes,
    cmsis_nn_persistent_bytes,
    device_arena_bytes,
    extra_kernel_flash_bytes,
    op_shapes,
    split_margin,
)
from tinyscale.boards.targets import MemoryRegion, Target
from tinyscale.errors import DoesNotFitError, NotModelledError
from tinyscale.graph.estimate import arena_plan, device_runtime

if TYPE_CHECKING:
    from tinyscale.graph.model import Model

# The two arena rules, as reports name them.
DEVICE_MODEL_RULE = "32-bit model"
HOST_MARGIN_RULE = "host + margin"
# Added to the modelled 32-bit minimum: the replay matched QEMU's arena_used_bytes()
# to the byte and the minimum was confirmed there (benchmarks/device_arena.py
# --check-minimum), so none is needed.
DEVICE_ARENA_SLACK_BYTES = 0
# Firmware whose TFLM is the one tinyscale.graph.tflm_abi was measured on: cmake-arm
# projects compile a create_tflm_tree.py tree (tflite-micro 90b983c2 here). The
# Pico's pico-tflmicro and the Arduino_TensorFlowLite library vendor their own
# TFLM snapshots, whose structs and kernels were not measured: the host rule.
MODELLED_BUILD_SYSTEMS = ("cmake-arm",)
DEVICE_MODEL_NOTE = (
    "arena = align16(minimal arena of the 32-bit firmware build, replayed analytically: TFLM's struct sizes on "
    "32-bit Arm, the kernel library's op data and scratch requests planned with the activations; measured on "
    "TFLM 90b983c2 with CMSIS-NN 4ab83cc); device_arena_used_bytes is the arena_used_bytes() the firmware prints"
)


@dataclass(frozen=True)
class DeviceArena:
    """The analytic 32-bit firmware arena of one model with the target's kernels."""

    minimum_bytes: int  # smallest arena AllocateTensors accepts
    used_bytes: int  # what arena_used_bytes() prints after AllocateTensors


@dataclass(frozen=True)
class Placement:
    """Flash and SRAM need of one model on one target."""

    model_bytes: int
    arena_bytes: int  # the host-measured (or estimated) minimal arena
    arena_margin_bytes: int  # device arena - arena (kernel scratch + slack; negative under the 32-bit model)
    device_arena_bytes: int  # what the firmware allocates (see place_model)
    selftest_flash_bytes: int  # the firmware's embedded self-test input and expected output
    flash_needed_bytes: int
    flash_budget_bytes: int
    sram_needed_bytes: int
    sram_budget_bytes: int
    arena_region: str
    # The margin's two parts: the optimized kernels' largest scratch buffer (0 for
    # reference and ESP-NN ANSI kernels) and the fixed slack plus the 16-byte alignment.
    kernel_scratch_bytes: int = 0
    arena_slack_bytes: int = 0
    flash_reserved_bytes: int = 0  # the target's reserved runtime flash (TFLM, drivers, app)
    sram_reserved_bytes: int = 0  # the arena region's reserved bytes (stacks, heap, statics)
    extra_kernel_flash_bytes: int = 0  # runtime code beyond the reserve (the patch kernels)
    # The modelled 32-bit figures (None: the model is not covered, the host rule sized the arena).
    device_arena_used_bytes: int | None = None  # the firmware's `ARENA used`
    device_arena_minimum_bytes: int | None = None
    arena_rule: str = HOST_MARGIN_RULE

    @property
    def flash_fits(self) -> bool:
        return self.flash_needed_bytes <= self.flash_budget_bytes

    @property
    def sram_fits(self) -> bool:
        return self.sram_needed_bytes <= self.sram_budget_bytes

    @property
    def fits(self) -> bool:
        return self.flash_fits and self.sram_fits

    @property
    def flash_headroom_bytes(self) -> int:
        return self.flash_budget_bytes - self.flash_needed_bytes

    @property
    def sram_headroom_bytes(self) -> int:
        return self.sram_budget_bytes - self.sram_needed_bytes

    @property
    def failing(self) -> tuple[str, ...]:
        """The budgets this placement exceeds: () when it fits."""
        return tuple(name for name, ok in (("flash", self.flash_fits), ("sram", self.sram_fits)) if not ok)

    def to_dict(self) -> dict:
        """The JSON form every command reports (fit, scale, simulate)."""
        return {
            "model_bytes": self.model_bytes,
            "arena_bytes": self.arena_bytes,
            "arena_margin_bytes": self.arena_margin_bytes,
            "kernel_scratch_bytes": self.kernel_scratch_bytes,
            "arena_slack_bytes": self.arena_slack_bytes,
            "device_arena_bytes": self.device_arena_bytes,
            "device_arena_used_bytes": self.device_arena_used_bytes,
            "device_arena_minimum_bytes": self.device_arena_minimum_bytes,
            "arena_rule": self.arena_rule,
            "selftest_flash_bytes": self.selftest_flash_bytes,
            "flash_reserved_bytes": self.flash_reserved_bytes,
            "extra_kernel_flash_bytes": self.extra_kernel_flash_bytes,
            "sram_reserved_bytes": self.sram_reserved_bytes,
            "arena_region": self.arena_region,
            "flash_needed_bytes": self.flash_needed_bytes,
            "flash_budget_bytes": self.flash_budget_bytes,
            "flash_headroom_bytes": self.flash_headroom_bytes,
            "sram_needed_bytes": self.sram_needed_bytes,
            "sram_budget_bytes": self.sram_budget_bytes,
            "sram_headroom_bytes": self.sram_headroom_bytes,
            "fits": self.fits,
            "flash_fits": self.flash_fits,
            "sram_fits": self.sram_fits,
        }

    def describe_shortfall(self) -> str:
        parts = []
        if not self.flash_fits:
            parts.append(f"flash {self.flash_needed_bytes:,} B > {self.flash_budget_bytes:,} B")
        if not self.sram_fits:
            parts.append(f"SRAM ({self.arena_region}) {self.sram_needed_bytes:,} B > {self.sram_budget_bytes:,} B")
        return ", ".join(parts) or "fits"

    def require_fits(self, subject: str, target_name: str) -> None:
        """Raise DoesNotFitError (exit 3) when this placement exceeds a budget.

        Commands call it after printing their report, so the user gets the full
        report on stdout and one error line on stderr.
        """
        if not self.fits:
            raise DoesNotFitError(f"{subject} does not fit {target_name}: {self.describe_shortfall()}")


def _region_need(region: MemoryRegion, arena_bytes: int) -> int:
    return arena_bytes + region.reserved_bytes


def choose_arena_region(target: Target, arena_bytes: int) -> MemoryRegion:
    """The first arena-capable region (file order = preference) that holds the arena.

    When none does, the roomiest one, so the shortfall is reported against the
    best the board can offer.
    """
    regions = target.arena_regions
    for region in regions:
        if _region_need(region, arena_bytes) <= region.size_bytes:
            return region
    return max(regions, key=lambda region: region.arena_budget_bytes)


def device_arena(model: "Model", target: Target) -> DeviceArena | None:
    """The analytic 32-bit arena of `model` in `target`'s firmware (None when the replay does not cover it)."""
    if target.build_system not in MODELLED_BUILD_SYSTEMS:
        return None
    try:
        plan = arena_plan(model, device_runtime(target.kernel_library, target.cpu))
        return DeviceArena(plan.arena_bytes, plan.used_bytes)
    except NotModelledError:
        return None


def place_model(target: Target, model: "Model", model_bytes: int, host_arena_bytes: int,
                selftest_bytes: int = 0) -> Placement:
    """The one arena rule of fit, simulate and firmware.

    The 32-bit replay of the target's firmware build (struct sizes, kernel
    library's op data and scratch requests) when it covers the model and the
    target: align16(its minimum + DEVICE_ARENA_SLACK_BYTES). Otherwise the host
    figure plus the kernel library's margin (largest scratch buffer + slack).
    """
    persistent = cmsis_nn_persistent_bytes(model.graph) if target.kernel_library == "cmsis-nn" else 0
    return place_by_rule(target, model_bytes, host_arena_bytes, tuple(op_shapes(model.graph)),
                         device_arena(model, target), selftest_bytes, persistent)


def place_by_rule(target: Target, model_bytes: int, host_arena_bytes: int, shapes: tuple[OpShapes, ...],
                  device: DeviceArena | None, selftest_bytes: int = 0, persistent_bytes: int = 0) -> Placement:
    """:func:`place_model`'s rule once the model's operator shapes and 32-bit arena are known
    (fit passes them memoised per spec): the device arena when there is one, else the host
    figure plus the kernel library's margin and `persistent_bytes` (CMSIS-NN's LSTM sums)."""
    kernel_flash = extra_kernel_flash_bytes(shapes)
    if device is None:
        margin = arena_margin_bytes(shapes, target.kernel_library, target.cpu) + persistent_bytes
        return place(target, model_bytes, host_arena_bytes, margin, selftest_bytes, kernel_flash)
    return place(target, model_bytes, host_arena_bytes, 0, selftest_bytes, kernel_flash, device=device)


def place(
    target: Target, model_bytes: int, arena_bytes: int, margin_bytes: int = 0, selftest_bytes: int = 0,
    kernel_flash_bytes: int = 0, device: DeviceArena | None = None,
) -> Placement:
    """Flash and SRAM need of a model whose host arena is `arena_bytes`.

    Without `device`, the device arena is the host figure plus `margin_bytes`
    (tinyscale.boards.kernels.arena_margin_bytes for the target's kernel library);
    with it, the modelled 32-bit minimum (see :func:`place_model`), and the
    margin is what that adds to the host figure (negative: 32-bit structs
    are smaller). The SRAM need is for the device arena.
    `selftest_bytes` is the int8 input + output the firmware embeds for its
    self-test: flash that every generated project spends beside the model.
    `kernel_flash_bytes` is runtime code the board's reserve does not cover
    (tinyscale.boards.kernels.extra_kernel_flash_bytes: the patch kernels).
    """
    if device is None:
        device_arena = device_arena_bytes(arena_bytes, margin_bytes)
        scratch, _ = split_margin(margin_bytes)
        slack = device_arena - arena_bytes - scratch
    else:
        # The kernels' scratch buffers are planned inside the modelled minimum.
        device_arena = align_up(device.minimum_bytes + DEVICE_ARENA_SLACK_BYTES, ARENA_ALIGNMENT)
        scratch, slack = 0, device_arena - device.minimum_bytes
    region = choose_arena_region(target, device_arena)
    return Placement(
        model_bytes=model_bytes,
        arena_bytes=arena_bytes,
        arena_margin_bytes=device_arena - arena_bytes,
        device_arena_bytes=device_arena,
        selftest_flash_bytes=selftest_bytes,
        flash_needed_bytes=model_bytes + selftest_bytes + target.flash.reserved_bytes + kernel_flash_bytes,
        flash_budget_bytes=target.flash.budget_bytes,
        sram_needed_bytes=_region_need(region, device_arena),
        sram_budget_bytes=region.size_bytes,
        arena_region=region.name,
        kernel_scratch_bytes=scratch,
        arena_slack_bytes=slack,
        flash_reserved_bytes=target.flash.reserved_bytes,
        sram_reserved_bytes=region.reserved_bytes,
        extra_kernel_flash_bytes=kernel_flash_bytes,
        device_arena_used_bytes=device.used_bytes if device else None,
        device_arena_minimum_bytes=device.minimum_bytes if device else None,
        arena_rule=DEVICE_MODEL_RULE if device else HOST_MARGIN_RULE,
    )


def selftest_flash_bytes(input_shape: tuple[int, ...], classes: int) -> int:
    """Flash of one int8 self-test input image and its expected int8 output."""
    count = 1
    for dim in input_shape:
        count *= dim
    return count + classes
