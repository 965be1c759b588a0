"""Project-level promises: README commands, packaging, fast TF-free core."""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _quickstart_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    quickstart = readme.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    return [block.strip() for block in re.findall(r"```sh\n(.*?)```", quickstart, re.S)]


def test_readme_has_exactly_two_setup_commands():
    commands = _quickstart_commands()
    assert len(commands) == 2
    assert commands[0].endswith("tinyscale fit --target esp32")
    assert "pytest" in commands[1]


def test_ci_runs_the_readme_test_command_verbatim():
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert _quickstart_commands()[1] in ci_lines


def test_core_imports_no_tensorflow():
    code = (
        "import sys\n"
        "import tinyscale.cli, tinyscale.search.fit, tinyscale.graph.estimate, tinyscale.boards.targets, tinyscale.network.arch\n"
        "heavy = [m for m in ('tensorflow', 'keras', 'tflite_micro') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_python_dash_m_runs_the_cli():
    ok = subprocess.run([sys.executable, "-m", "tinyscale", "targets"], capture_output=True, text=True)
    assert ok.returncode == 0 and "esp32" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "tinyscale", "fit", "--target", "no-such-board"],
                         capture_output=True, text=True)
    assert bad.returncode == 2
    assert bad.stderr.count("\n") == 1 and bad.stderr.startswith("error: unknown target")


def test_wheel_ships_targets_templates_and_firmware(tmp_path):
    pytest.importorskip("hatchling")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("tinyscale-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "tinyscale/targets/esp32.toml" in names
    for folder in ("templates", "firmware"):
        shipped = {name for name in names if name.startswith(f"tinyscale/{folder}/")}
        on_disk = {
            f"tinyscale/{folder}/{path.relative_to(ROOT / folder).as_posix()}"
            for path in (ROOT / folder).rglob("*")
            if path.is_file() and "__pycache__" not in path.parts
        }
        assert on_disk <= shipped, on_disk - shipped
