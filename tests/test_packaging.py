"""pyproject.toml: the TensorFlow dependency is the GPU-capable wheel, pinned to the estimator's converter."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from tinyscale.training.convert import tensorflow_version

PROJECT = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]


def _requirement(requirements: list[str], name: str) -> str:
    found = [r for r in requirements if re.match(rf"{re.escape(name)}\s*(\[|==|>|<|~|!|;|$)", r)]
    assert len(found) == 1, (name, requirements)
    return found[0]


def test_tensorflow_is_the_gpu_capable_wheel_pinned_exactly():
    dependencies = PROJECT["dependencies"]
    assert not [r for r in dependencies if r.startswith("tensorflow-cpu")], dependencies
    pin = _requirement(dependencies, "tensorflow")
    assert re.fullmatch(r"tensorflow==\d+\.\d+\.\d+", pin), pin
    # The estimator reproduces this converter byte for byte: the pin is the version tests run with.
    assert pin.split("==")[1] == tensorflow_version()


def test_gpu_extra_adds_cuda_to_the_same_tensorflow_version():
    pin = _requirement(PROJECT["dependencies"], "tensorflow").split("==")[1]
    assert PROJECT["optional-dependencies"]["gpu"] == [f"tensorflow[and-cuda]=={pin}"]
