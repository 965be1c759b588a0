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

from tinyscale.boards.targets import check_fields, read_toml_file
from tinyscale.errors import UsageError
from tinyscale.fsutil import atomic_write_text
from tinyscale.network.scaling import Coefficients

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
COEFFICIENT_KEYS = ("alpha", "beta", "gamma")
_TOP_FIELDS = {"schema_version": (int, True), "coefficients": (dict, True), "provenance": (dict, False)}
_COEFFICIENT_FIELDS = {key: ((int, float), True) for key in COEFFICIENT_KEYS}
_PROVENANCE_FIELDS = {
    "target": (str, False),
    "data": (str, False),
    "base": (str, False),
    "trials": (int, False),
    "seeds": (list, False),  # of integers, checked below
    "tinyscale_version": (str, False),
    "epochs": (int, False),
    "limit": (int, False),
    "int8_accuracy": ((float, int), False),
    "phi": ((float, int), False),
    "method": (str, False),
}


@dataclass(frozen=True)
class CoefficientsFile:
    coefficients: Coefficients
    provenance: dict[str, Any] = field(default_factory=dict)


def parse_coefficients(data: dict[str, Any], source: str) -> CoefficientsFile:
    """A parsed TOML document as coefficients and provenance, or one UsageError line."""
    check_fields(source, data, _TOP_FIELDS, UsageError)  # the boards' schema rule
    if data["schema_version"] != SCHEMA_VERSION:
        raise UsageError(f"{source}: schema_version must be {SCHEMA_VERSION}, got {data['schema_version']!r}")
    table = data["coefficients"]
    check_fields(f"{source} [coefficients]", table, _COEFFICIENT_FIELDS, UsageError)
    for key in COEFFICIENT_KEYS:
        if not math.isfinite(table[key]) or table[key] < 1:
            raise UsageError(f"{source} [coefficients]: {key!r} must be a finite number >= 1, got {table[key]!r}")
    provenance = data.get("provenance", {})
    check_fields(f"{source} [provenance]", provenance, _PROVENANCE_FIELDS, UsageError)
    if not all(isinstance(seed, int) and not isinstance(seed, bool) for seed in provenance.get("seeds", [])):
        raise UsageError(f"{source} [provenance]: 'seeds' must be a list of integers, got {provenance['seeds']!r}")
    return CoefficientsFile(Coefficients(*(float(table[key]) for key in COEFFICIENT_KEYS)), dict(provenance))


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
