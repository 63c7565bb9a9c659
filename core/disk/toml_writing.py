"""Write plain data (dicts of scalars, lists and small tables) as TOML.

Python reads TOML with the standard library's ``tomllib`` but cannot write it; the
run config only needs tables of scalars, lists and small inline tables, so a few
lines here spare a dependency.  ``None`` has no TOML spelling: such keys are left
out, and the reader falls back to the field's default (which is ``None``).
"""

from __future__ import annotations

import json
import math
from typing import Any


def dumps_toml(data: dict[str, Any]) -> str:
    """TOML text for ``data``: top-level scalars first, then one ``[table]`` per top-level dict.

    Dicts below the top level (a rank pattern, variant settings) are written as inline tables.
    """
    lines: list[str] = []
    tables = {k: v for k, v in data.items() if isinstance(v, dict)}
    lines += [f"{_key(k)} = {_value(v)}" for k, v in data.items() if k not in tables and v is not None]
    for name, table in tables.items():
        lines += ["", f"[{_key(name)}]"]
        lines += [f"{_key(k)} = {_value(v)}" for k, v in table.items() if v is not None]
    return "\n".join(lines).lstrip("\n") + "\n"


def _key(key: str) -> str:
    return key if key.replace("_", "").replace("-", "").isalnum() else json.dumps(key)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a JSON string is a valid TOML basic string
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_value(v) for v in value if v is not None) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items() if v is not None) + "}"
    raise TypeError(f"cannot write {type(value).__name__} as TOML: {value!r}")
