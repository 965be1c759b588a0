"""Shared fixtures: synthetic targets with chosen budgets."""

from __future__ import annotations

import pytest

from tinyscale.targets import Target, parse_target


def make_target(
    flash_budget: int,
    arena_budgets: list[int] | int,
    *,
    flash_reserved: int = 0,
    name: str = "synthetic",
) -> Target:
    """A board whose model flash and arena budgets are exactly the given bytes."""
    if isinstance(arena_budgets, int):
        arena_budgets = [arena_budgets]
    memory = [
        {"name": f"ram{i}", "kind": "sram", "size_bytes": budget, "reserved_bytes": 0, "arena": True, "origin": 0x20000000 + i * 0x1000000}
        for i, budget in enumerate(arena_budgets)
    ]
    data = {
        "schema_version": 1,
        "name": name,
        "board": "synthetic test board",
        "core": "Cortex-M4F",
        "cpu": "cortex-m4",
        "clock_hz": 100_000_000,
        "kernel_library": "cmsis-nn",
        "build_system": "cmake-arm",
        "flash": {
            "size_bytes": flash_budget + flash_reserved,
            "budget_bytes": flash_budget + flash_reserved,
            "reserved_bytes": flash_reserved,
            "origin": 0x08000000,
        },
        "memory": memory,
    }
    return parse_target(data, source=name)


@pytest.fixture
def synthetic_target():
    return make_target


def repack_model(model: bytes, edit) -> bytes:
    """`model` re-packed after `edit(ModelT)`: a real flatbuffer with one deliberate defect."""
    import flatbuffers
    from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as schema

    obj = schema.ModelT.InitFromPackedBuf(bytearray(model), 0)
    edit(obj)
    builder = flatbuffers.Builder(len(model) + 1024)
    builder.Finish(obj.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())
