"""benchmarks/latency_measure.py without QEMU: the ticks -> instructions conversion, the PROFILE
lines of a stored run (tests/golden/profile: tests/golden/tiny.tflite with CMSIS-NN on
mps2-an386 under -icount shift=0) and the operator records built from them."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import latency_measure as lm  # noqa: E402

from tinyscale.boards.targets import load_target
from tinyscale.graph.analysis import model_macs
from tinyscale.graph.flatbuffer import read_flatbuffer

GOLDEN = Path(__file__).parent / "golden"
TINY_MODEL = GOLDEN / "tiny.tflite"
STORED_RUN = GOLDEN / "profile" / "tiny-mps2-an386-cmsis-nn.txt"


@pytest.mark.parametrize("ticks, hz, instructions", [
    (1, 25_000_000, 40),  # mps2-an386/an500: 40 ns per tick, 1 ns per instruction
    (68_530, 25_000_000, 2_741_200),
    (3, 20_000_000, 150),  # mps2-an505
    (1, 32_000_000, 31),  # mps3-an547: 31.25 per tick, rounded
    (4, 32_000_000, 125),
    (2, 32_000_000, 63),  # 62.5 rounds up
    (0, 25_000_000, 0),
])
def test_ticks_convert_at_one_nanosecond_per_instruction(ticks, hz, instructions):
    assert lm.ticks_to_instructions(ticks, hz) == instructions


def test_a_larger_icount_shift_means_fewer_instructions_per_tick():
    # shift=2: 4 ns per instruction, so a 40 ns tick is 10 instructions.
    assert lm.ticks_to_instructions(5, 25_000_000, shift=2) == 50


def test_a_timer_without_a_rate_is_refused():
    with pytest.raises(ValueError, match="ticks_per_second"):
        lm.ticks_to_instructions(10, 0)


def test_stored_profile_parses_and_sums_to_the_invoke():
    profile = lm.parse_profile(STORED_RUN.read_text())
    assert len(profile.events) == 18 and profile.dropped == 0 and profile.passed
    assert profile.events[0] == lm.ProfileEvent(0, "CONV_2D", 8485)
    assert profile.total_ticks == sum(e.ticks for e in profile.events) == 68_496
    # The interpreter's own work between operators: under 0.1% of the Invoke here.
    assert 0 <= profile.invoke_ticks - profile.total_ticks <= profile.invoke_ticks // 1000
    # The microsecond timer agrees with the tick count to its 1 us resolution.
    invoke = lm.ticks_to_instructions(profile.invoke_ticks, profile.ticks_per_second)
    assert abs(profile.inference_us * 1000 - invoke) <= 1000


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.replace("PROFILE TOTAL", "PROFILE SUM"), "no PROFILE TOTAL"),
    (lambda t: t.replace("PROFILE 5 DEPTHWISE_CONV_2D 3734\n", ""), "17 PROFILE lines for 18 events"),
    (lambda t: t.replace("PROFILE 5 DEPTHWISE_CONV_2D 3734", "PROFILE 5 DEPTHWISE_CONV_2D 3735"), "do not sum"),
])
def test_incomplete_profiles_are_refused(edit, message):
    with pytest.raises(ValueError, match=message):
        lm.parse_profile(edit(STORED_RUN.read_text()))


def test_records_carry_each_operators_shape_from_the_graph():
    data = TINY_MODEL.read_bytes()
    profile = lm.parse_profile(STORED_RUN.read_text())
    rows = lm.records(profile, data, "tiny", load_target("mps2-an386"), "cmsis-nn")
    assert [r["op_index"] for r in rows] == list(range(18))
    assert sum(r["macs"] for r in rows) == model_macs(read_flatbuffer(data))
    first = rows[0]
    assert first["core"] == "cortex-m4" and first["machine"] == "mps2-an386" and first["kernel_library"] == "cmsis-nn"
    assert first["op_type"] == "CONV_2D" and first["instructions"] == 8485 * 40
    assert first["input_shapes"] == [[1, 32, 32, 3]] and first["output_shape"] == [1, 16, 16, 8]
    assert first["filter_shape"] == [8, 3, 3, 3] and first["stride"] == [2, 2] and first["padding"] == "SAME"
    assert first["macs"] == 16 * 16 * 8 * 3 * 3 * 3
    assert first["input_elements"] == 32 * 32 * 3 and first["output_elements"] == 16 * 16 * 8
    assert first["dtype"] == "int8" and first["pool_size"] is None
    add = rows[3]
    assert add["op_type"] == "ADD" and add["filter_shape"] is None and add["stride"] is None
    assert add["input_shapes"] == [[1, 16, 16, 8], [1, 16, 16, 8]] and add["input_elements"] == 2 * 16 * 16 * 8
    assert {r["model_invoke_instructions"] for r in rows} == {68_530 * 40}
    assert {r["model_total_instructions"] for r in rows} == {2_741_000}
    assert sum(r["instructions"] for r in rows) == rows[0]["model_operator_sum_instructions"]


def test_records_refuse_a_profile_of_another_graph():
    profile = lm.parse_profile(STORED_RUN.read_text())
    shorter = lm.Profile(profile.events[:-1], profile.total_ticks - profile.events[-1].ticks, profile.invoke_ticks,
                         profile.ticks_per_second, 0, profile.inference_us, True)
    with pytest.raises(ValueError, match="do not match"):
        lm.records(shorter, TINY_MODEL.read_bytes(), "tiny", load_target("mps2-an386"), "cmsis-nn")


def test_refreshed_features_keep_the_counts_and_skip_models_not_on_disk(tmp_path):
    data = TINY_MODEL.read_bytes()
    rows = lm.records(lm.parse_profile(STORED_RUN.read_text()), data, "tiny-phi0", load_target("mps2-an386"), "cmsis-nn")
    stale = [{k: v for k, v in row.items() if k != "dtype"} for row in rows]
    assert lm.refresh_features(stale, tmp_path) == stale  # no model file: rows kept as they are
    (tmp_path / "tiny-phi0.tflite").write_bytes(data)
    assert lm.refresh_features(stale, tmp_path) == rows


# An `arm-none-eabi-objdump -d` excerpt: Thumb-1, BL and a literal-pool word (ARMv6-M), then
# a Thumb-2 load, a CBZ and an IT block (ARMv7-M only).
OBJDUMP_LISTING = (
    "app.elf:     file format elf32-littlearm\n\n"
    "Disassembly of section .text:\n\n"
    "00000044 <Reset_Handler>:\n"
    "      44:\t480e      \tldr\tr0, [pc, #56]\t@ (80 <Reset_Handler+0x3c>)\n"
    "      4c:\td207      \tbcs.n\t5e <Reset_Handler+0x1a>\n"
    "      5a:\tf01a f8e7 \tbl\t1a22c <memcpy>\n"
    "      80:\t20000000 \t.word\t0x20000000\n"
    "      84:\tf8d2 3d88 \tldr.w\tr3, [r2, #3464]\t@ 0xd88\n"
    "      88:\tb118      \tcbz\tr0, 92 <f+0x12>\n"
    "      8a:\tbf18      \tit\tne\n"
)


def test_armv6m_check_finds_exactly_the_armv7m_instructions():
    found = lm.armv6m_violations_in(OBJDUMP_LISTING)
    assert [line.split("\t")[2] for line in found] == ["ldr.w", "cbz", "it"]


def test_m0plus_is_measured_on_the_m4_board_built_for_its_own_core():
    target = lm.measurement_target("cmsis-nn", "mps2-an386-m0plus")
    assert (target.cpu, target.fpu, target.kernel_library) == ("cortex-m0plus", None, "cmsis-nn")
    assert lm.qemu_machine(target) == "mps2-an386"
    assert lm.measurement_target("reference", "mps2-an386").cpu == "cortex-m4"
