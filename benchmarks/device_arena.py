"""Predicted vs QEMU-measured device arena (`arena_used_bytes()`) on every emulated Cortex-M core.

The analytic model (tinyscale.graph.estimate.device_arena_used_bytes) predicts what
the firmware prints as `ARENA used`; this script compares it with the stored
QEMU measurements (tests/data/device_arena_measurements.json) and prints one
markdown row per (core, kernels, model):

    python benchmarks/device_arena.py                      # table from the stored figures
    python benchmarks/device_arena.py --measure \\
        --tflm-dir TFLM_DIR --work BUILD_DIR   # re-measure, then the table

--measure renders each model's mps2/mps3 project, builds it against the TFLM
trees (TFLM_ROOT-style trees per core, found under --tflm-dir as tree-<core>-<kind>,
or named by the variables tests/test_firmware_integration.py reads), runs it
under QEMU and rewrites the data file. One build directory per (board, tree),
so TFLM compiles once per tree. Models: the golden tiny network, tiny and
tiny-se at a few phi (converted with seeded random weights), tiny patched 2x2,
the networks `tinyscale fit --target esp32 --patch off` and `--target
mps3-an547` pick (the first overflows the M55 board's flash: not measured
there), and TFLM's person_detect. Each project is also rebuilt with an arena
16 B below the modelled minimum, which AllocateTensors must refuse.
Converting and fitting the models needs TensorFlow; the table does not: it
rebuilds each measured model's graph from its row (:func:`analytic_graph`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path

from tinyscale.errors import NotModelledError
from tinyscale.graph import estimate
from tinyscale.graph.flatbuffer import read_flatbuffer

REPO = Path(__file__).resolve().parents[1]
DATA_FILE = REPO / "tests" / "data" / "device_arena_measurements.json"
TINY_MODEL = REPO / "tests" / "golden" / "tiny.tflite"
PERSON_DETECT = "tensorflow/lite/micro/models/person_detect.tflite"
# tflite-micro commit the measured trees were made from (create_tflm_tree.py at this commit).
TFLM_COMMIT = "90b983c2b3f1480642e040bbd2ddb37b998f3424"
# (board, cpu, tree-directory core name) of every QEMU-emulated core.
BOARDS = (("mps2-an386", "cortex-m4", "m4"), ("mps2-an500", "cortex-m7", "m7"),
          ("mps2-an505", "cortex-m33", "m33"), ("mps3-an547", "cortex-m55", "m55"))
KERNELS = ("cmsis-nn", "reference")
SPECS = (("tiny", 0.5), ("tiny", 1.0), ("tiny-se", 0.0))
MODEL_ORDER = ("tiny", "tiny-phi0.5", "tiny-phi1", "tiny-se-phi0", "tiny-2x2", "esp32-fit", "mps3-an547-fit",
               "person_detect")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def recipes(model_dir: Path) -> dict[str, dict]:
    """How the spec-built models are made (base, phi), so the tests rebuild their graphs without TensorFlow."""
    found = {f"{base}-phi{phi:g}": {"base": base, "phi": phi} for base, phi in SPECS}
    for name in ("esp32-fit", "mps3-an547-fit"):
        path = model_dir / name / "fit.json"
        if path.is_file():
            answer = json.loads(path.read_text())
            found[name] = {"base": answer["base"], "phi": answer["phi"], "fit_target": answer["target"]}
    return found


def annotate(rows: list[dict], found: dict[str, dict]) -> list[dict]:
    return [{**row, **found.get(row["model"], {})} for row in rows]


def build_models(model_dir: Path, tflm_source: Path | None) -> dict[str, bytes]:
    """The measured models by id, written to (and reused from) `model_dir`."""
    model_dir.mkdir(parents=True, exist_ok=True)
    models = {"tiny": TINY_MODEL.read_bytes()}

    def cached(name: str, make) -> None:
        path = model_dir / f"{name}.tflite"
        if not path.is_file():
            path.write_bytes(make())
        models[name] = path.read_bytes()

    from tinyscale.network.arch import scale  # noqa: PLC0415
    from tinyscale.training.convert import spec_to_tflite  # noqa: PLC0415 - TensorFlow

    for base, phi in SPECS:
        cached(f"{base}-phi{phi:g}", lambda: spec_to_tflite(scale(base, phi).spec))
    sys.path.insert(0, str(REPO / "benchmarks"))
    import patch_firmware  # noqa: PLC0415

    cached("tiny-2x2", lambda: patch_firmware.patched(models["tiny"], (2, 2),
                                                      patch_firmware.tiny_split(models["tiny"])).data)
    cached("esp32-fit", lambda: _fitted("esp32", model_dir / "esp32-fit"))
    cached("mps3-an547-fit", lambda: _fitted("mps3-an547", model_dir / "mps3-an547-fit"))  # fits the M55's flash
    if tflm_source is not None and (tflm_source / PERSON_DETECT).is_file():
        models["person_detect"] = (tflm_source / PERSON_DETECT).read_bytes()
    return models


def _fitted(target: str, out: Path) -> bytes:
    import subprocess  # noqa: PLC0415

    subprocess.run([sys.executable, "-m", "tinyscale", "fit", "--target", target, "--patch", "off",
                    "--out", str(out), "--force"], check=True, stdout=subprocess.DEVNULL)
    return (out / "model.tflite").read_bytes()


def find_tree(tflm_dir: Path, core: str, kernels: str) -> Path | None:
    """The create_tflm_tree.py tree of `core` with `kernels` (tree-cmsis / tree-ref for the M4)."""
    kind = "cmsis" if kernels == "cmsis-nn" else "ref"
    name = f"tree-{kind}" if core == "m4" else f"tree-{core}-{kind}"
    path = tflm_dir / name
    return path if (path / "tensorflow" / "lite" / "micro" / "micro_interpreter.h").is_file() else None


def measure_all(models: dict[str, bytes], tflm_dir: Path, work: Path, boards: list[str]) -> list[dict]:
    sys.path.insert(0, str(REPO / "benchmarks"))
    import firmware_sizes  # noqa: PLC0415

    rows = []
    for board, cpu, core in BOARDS:
        if boards and board not in boards:
            continue
        for kernels in KERNELS:
            tree = find_tree(tflm_dir, core, kernels)
            if tree is None:
                print(f"no {kernels} tree for {cpu} under {tflm_dir}", file=sys.stderr)
                continue
            for model_id, data in models.items():
                try:
                    row = firmware_sizes.measure(data, model_id, tree, work, slot_label="tiny", target_name=board)
                except RuntimeError as error:  # e.g. the image overflows the board's flash
                    print(f"{board} {kernels} {model_id}: not measured, {str(error).splitlines()[-3:]}",
                          file=sys.stderr)
                    continue
                rows.append({
                    "core": cpu, "machine": board, "kernels": kernels, "model": model_id,
                    "model_sha256": sha256(data), "arena_used_bytes": row["device_arena_used_bytes"],
                    "arena_bytes": row["arena_bytes"], "selftest": row["selftest"],
                    "arena_16_less_fails": smaller_arena_fails(work, board, kernels, tree, row["arena_bytes"]),
                    "tflm_commit": TFLM_COMMIT,
                })
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return rows


def smaller_arena_fails(work: Path, board: str, kernels: str, tree: Path, arena_bytes: int) -> bool:
    """Rebuild the project just measured with an arena 16 B smaller: does AllocateTensors refuse it?

    The firmware allocated the modelled minimum (16-aligned); failing 16 B
    below shows the model is tight, not just sufficient.
    """
    import firmware_sizes  # noqa: PLC0415

    from tinyscale.boards.targets import load_target  # noqa: PLC0415
    from tinyscale.project.board_glue import qemu_machine  # noqa: PLC0415

    slot = work / f"{'' if board == firmware_sizes.DEFAULT_TARGET else board + '-'}tiny-{kernels}"
    header = slot / "project" / "src" / "selftest_data.h"
    text = header.read_text()
    header.write_text(text.replace(f"#define TS_ARENA_BYTES {arena_bytes}u", f"#define TS_ARENA_BYTES {arena_bytes - 16}u"))
    elf = firmware_sizes.build(slot / "project", slot / "build", tree)
    run = firmware_sizes.run_qemu(elf, machine=qemu_machine(load_target(board)))
    header.write_text(text)
    return "AllocateTensors failed" in run.text


def analytic_graph(row: dict, tflm_source: Path | None):
    """The graph of a measured model without TensorFlow, or None (person_detect without a checkout).

    The golden file and person_detect as read; a converted or fitted network as
    the spec-built graph of its row's base and phi (the converter's graph, to
    the arena: tests/test_estimate.py); tiny-2x2 as the pure patch pass makes it.
    """
    from tinyscale.graph.patch import find_candidate, patch_model, split_candidates  # noqa: PLC0415
    from tinyscale.network.arch import scale  # noqa: PLC0415

    model_id = row["model"]
    if model_id == "tiny":
        return read_flatbuffer(TINY_MODEL.read_bytes())
    if model_id == "tiny-2x2":  # patch_firmware.py's schedule: 2x2 up to the second block's depthwise
        model = read_flatbuffer(TINY_MODEL.read_bytes())
        split = [c.name for c in split_candidates(model) if "b1_dw_act" in c.name]
        return patch_model(model, find_candidate(model, split[0]), (2, 2))
    if model_id == "person_detect":
        path = tflm_source / PERSON_DETECT if tflm_source else None
        return read_flatbuffer(path.read_bytes()) if path and path.is_file() else None
    return estimate.tflite_graph(scale(row["base"], row["phi"]).spec)


def predicted(graph, cpu: str, kernels: str) -> int | None:
    try:
        return estimate.device_arena_used_bytes(graph, kernels, cpu)
    except NotModelledError:
        return None


def table(rows: list[dict], tflm_source: Path | None) -> str:
    lines = ["| core | QEMU machine | kernels | model | predicted used B | measured used B | predicted - measured "
             "| firmware arena B | 16 B less |",
             "|---|---|---|---|---:|---:|---:|---:|---|"]
    for row in rows:
        graph = analytic_graph(row, tflm_source)
        if graph is None:
            guess, diff = "model missing", ""
        else:
            value = predicted(graph, row["core"], row["kernels"])
            guess = "not modelled" if value is None else f"{value:,}"
            diff = "" if value is None else f"{value - row['arena_used_bytes']:+,}"
        smaller = {True: "refused", False: "accepted", None: "-"}[row.get("arena_16_less_fails")]
        lines.append(f"| {row['core']} | {row['machine']} | {row['kernels']} | {row['model']} | {guess} "
                     f"| {row['arena_used_bytes']:,} | {diff} | {row.get('arena_bytes', 0):,} | {smaller} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--measure", action="store_true", help="re-measure under QEMU and rewrite the data file")
    parser.add_argument("--tflm-dir", type=Path, default=None,
                        help="holds src/ (a tflite-micro checkout) and tree-*/ (create_tflm_tree.py trees); "
                             "needed by --measure")
    parser.add_argument("--models", type=Path, default=Path("/tmp/tinyscale-device-arena-models"),
                        help="where the converted models are kept")
    parser.add_argument("--work", type=Path, default=Path("/tmp/tinyscale-device-arena"), help="build directories")
    parser.add_argument("--board", action="append", default=[], help="measure only this QEMU board (repeatable)")
    args = parser.parse_args(argv)
    if args.measure and args.tflm_dir is None:
        parser.error("--measure needs --tflm-dir")
    # person_detect comes from a tflite-micro checkout: --tflm-dir's src/, else $TFLM_SOURCE (as the tests).
    source = args.tflm_dir / "src" if args.tflm_dir else (Path(os.environ["TFLM_SOURCE"])
                                                          if os.environ.get("TFLM_SOURCE") else None)
    if args.measure:
        models = build_models(args.models, source)
        fresh = measure_all(models, args.tflm_dir, args.work, args.board)
        write_rows(annotate(merge_rows(stored_rows(), fresh), recipes(args.models)))
    print(table(stored_rows(), source))
    return 0


def _key(row: dict) -> tuple[str, str, str]:
    return row["machine"], row["kernels"], row["model"]


def stored_rows() -> list[dict]:
    return json.loads(DATA_FILE.read_text())["measurements"] if DATA_FILE.is_file() else []


def merge_rows(old: list[dict], fresh: list[dict]) -> list[dict]:
    """The stored rows with the re-measured ones replaced, in board, kernels, model order."""
    merged = {_key(row): row for row in old}
    merged.update({_key(row): row for row in fresh})
    order = {board: i for i, (board, _, _) in enumerate(BOARDS)}
    return sorted(merged.values(), key=lambda r: (order.get(r["machine"], 99), KERNELS.index(r["kernels"]),
                                                  MODEL_ORDER.index(r["model"]) if r["model"] in MODEL_ORDER else 99))


def write_rows(rows: list[dict]) -> None:
    DATA_FILE.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps({"tflm_commit": TFLM_COMMIT, "measurements": rows}, indent=1) + "\n"
    tmp = DATA_FILE.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(DATA_FILE)


if __name__ == "__main__":
    raise SystemExit(main())
