"""Scaling coefficients as data: `coefficients.toml`, written by `tinyscale tune`, read by
`fit`, `scale`, `train` and `build --coefficients FILE`.

    schema_version = 1

    [coefficients]
    alpha = 1.2   # depth growth per unit of phi
    beta = 1.1    # width growth per unit of phi
    gamma = 1.15  # resolution growth per unit of phi

    [provenance]  # optional: where the numbers came from
    target = "nucleo-l476rg"
    data = "fashion-mnist"
    trials = 7
    seeds = [0]
    tinyscale_version = "0.1.0"

Unknown keys are refused (a typo must not silently fall back to the paper's
values) and every error is one line naming the file and the key.
"""

from __future__ import annotations

import logging
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tinyscale.errors import UsageError
from tinyscale.fsutil import atomic_write_text
from tinyscale.scaling import Coefficients
from tinyscale.targets import read_toml_file

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
COEFFICIENT_KEYS = ("alpha", "beta", "gamma")
# provenance key -> (accepted types, description for the error line)
_PROVENANCE_FIELDS: dict[str, tuple[tuple[type, ...], str]] = {
    "target": ((str,), "a string"),
    "data": ((str,), "a string"),
    "base": ((str,), "a string"),
    "trials": ((int,), "an integer"),
    "seeds": ((list,), "a list of integers"),
    "tinyscale_version": ((str,), "a string"),
    "epochs": ((int,), "an integer"),
    "limit": ((int,), "an integer"),
    "int8_accuracy": ((float, int), "a number"),
    "phi": ((float, int), "a number"),
    "method": ((str,), "a string"),
}


@dataclass(frozen=True)
class CoefficientsFile:
    coefficients: Coefficients
    provenance: dict[str, Any] = field(default_factory=dict)


def _fail(source: str, message: str) -> UsageError:
    return UsageError(f"{source}: {message}")


def _check_table(source: str, data: Any, name: str, allowed: set[str]) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise _fail(source, f"[{name}] must be a table")
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise _fail(source, f"unknown key {name}.{unknown[0]} (known: {', '.join(sorted(allowed))})")
    return data


def parse_coefficients(data: dict[str, Any], source: str) -> CoefficientsFile:
    """A parsed TOML document as coefficients and provenance, or one UsageError line."""
    _check_table(source, data, "top level", {"schema_version", "coefficients", "provenance"})
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        raise _fail(source, f"schema_version must be {SCHEMA_VERSION}, got {version!r}")
    if "coefficients" not in data:
        raise _fail(source, "missing table [coefficients] (alpha, beta, gamma)")
    table = _check_table(source, data["coefficients"], "coefficients", set(COEFFICIENT_KEYS))
    missing = [key for key in COEFFICIENT_KEYS if key not in table]
    if missing:
        raise _fail(source, f"missing key{'s' if len(missing) > 1 else ''} "
                            f"{', '.join('coefficients.' + key for key in missing)}")
    values = []
    for key in COEFFICIENT_KEYS:
        value = table[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 1:
            raise _fail(source, f"coefficients.{key} must be a finite number >= 1, got {value!r}")
        values.append(float(value))
    provenance = _check_table(source, data.get("provenance", {}), "provenance", set(_PROVENANCE_FIELDS))
    for key, value in provenance.items():
        types, description = _PROVENANCE_FIELDS[key]
        if isinstance(value, bool) or not isinstance(value, types):
            raise _fail(source, f"provenance.{key} must be {description}, got {value!r}")
    if not all(isinstance(seed, int) and not isinstance(seed, bool) for seed in provenance.get("seeds", [])):
        raise _fail(source, f"provenance.seeds must be a list of integers, got {provenance['seeds']!r}")
    return CoefficientsFile(Coefficients(*values), dict(provenance))


def load_coefficients(path: Path) -> CoefficientsFile:
    path = Path(path)
    return parse_coefficients(read_toml_file(path, "coefficients file", UsageError), str(path))


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)  # the shortest text that reads back as the same float
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        return f'"{escaped}"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    raise TypeError(f"no TOML form for {value!r}")


def format_coefficients(document: CoefficientsFile) -> str:
    """The TOML text of `document` (parse_coefficients reads it back to equal values)."""
    c = document.coefficients
    lines = [f"schema_version = {SCHEMA_VERSION}", "", "[coefficients]",
             f"alpha = {c.alpha!r}  # depth growth per unit of phi",
             f"beta = {c.beta!r}  # width growth per unit of phi",
             f"gamma = {c.gamma!r}  # resolution growth per unit of phi"]
    if document.provenance:
        lines += ["", "[provenance]"]
        lines += [f"{key} = {_toml_value(value)}" for key, value in document.provenance.items() if value is not None]
    return "\n".join(lines) + "\n"


def write_coefficients(path: Path, document: CoefficientsFile) -> None:
    parse_coefficients(tomllib.loads(format_coefficients(document)), str(path))  # never write what we cannot read
    atomic_write_text(path, format_coefficients(document))


def resolve_coefficients(path: Path | None, alpha: float | None, beta: float | None, gamma: float | None,
                         target: str | None = None) -> Coefficients:
    """The coefficients a command runs with: --coefficients FILE, else --alpha/--beta/--gamma over the paper's.

    A file tuned for another target still applies (warned): coefficients are a
    property of the data and the budgets, and the user may know better.
    """
    given = [name for name, value in (("--alpha", alpha), ("--beta", beta), ("--gamma", gamma)) if value is not None]
    if path is None:
        defaults = Coefficients()
        return Coefficients(defaults.alpha if alpha is None else alpha, defaults.beta if beta is None else beta,
                            defaults.gamma if gamma is None else gamma)
    if given:
        raise UsageError(f"--coefficients and {'/'.join(given)} exclude each other: the file sets all three")
    document = load_coefficients(path)
    tuned_for = document.provenance.get("target")
    if target is not None and tuned_for is not None and Path(target).stem != Path(tuned_for).stem:
        log.warning("%s was tuned for %s, used here for %s", path, tuned_for, target)
    return document.coefficients
