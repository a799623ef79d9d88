"""Turn what is wrong with ``poolwarden.yaml`` into one line: "file: field: problem; fix".

`translate_validation_error` does it for pydantic's `ValidationError` and
`translate_yaml_error` for PyYAML's errors. Neither quotes string input, so no message can
leak a DSN's password. The model is passed in as `root` rather than imported, so this
module does not depend on `poolwarden.config`.
"""

from __future__ import annotations

import difflib
import re
from typing import get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails, PydanticCustomError

from poolwarden.errors import ConfigError, DsnError

# Our validators raise these error types; their message is already "problem; fix".
INVALID = "poolwarden_invalid"
INVALID_DSN = "poolwarden_dsn"

_NAME_RULE = "may contain only letters, digits, '_', '.' and '-'"


def invalid(detail: str, *, kind: str = INVALID, path: str = "") -> PydanticCustomError:
    """Return the error a validator raises for "problem; fix" `detail` at `path` (if given)."""
    # The text travels in the context: a template with literal braces (${NAME}) would be
    # formatted by pydantic otherwise.
    return PydanticCustomError(kind, "{detail}", {"detail": detail, "path": path})


def did_you_mean(word: str, choices: list[str]) -> str:
    """Return "did you mean 'x'? " for the choice closest to `word`, or "" if none is close."""
    close = difflib.get_close_matches(word, choices, n=1)
    return f"did you mean {close[0]!r}? " if close else ""


def describe_value(value: object) -> str:
    """Name the YAML type of `value`; show it only when it cannot be a secret."""
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, int | float):
        return f"{'an integer' if isinstance(value, int) else 'a number'} ({value})"
    names: dict[type, str] = {str: "a string", dict: "a mapping", list: "a list"}
    return names.get(type(value), f"a value of type {type(value).__name__}")


# --- YAML errors --------------------------------------------------------------------------


class DuplicateKeyError(yaml.constructor.ConstructorError):
    """A mapping repeats a key; plain PyYAML would silently keep the last one."""


def translate_yaml_error(
    where: str, exc: yaml.MarkedYAMLError | yaml.reader.ReaderError, text: str
) -> ConfigError:
    """Turn a YAML error in `text`, the file at `where`, into one line with its position."""
    if isinstance(exc, yaml.reader.ReaderError):
        line = text.count("\n", 0, exc.position) + 1
        fix = "remove the control character"
        return ConfigError(f"{where}: line {line}: invalid YAML: {exc.reason}; {fix}")
    # Only the problem and the mark: str(exc) quotes the offending line, which may
    # hold a password.
    mark = exc.problem_mark or exc.context_mark
    at = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
    fix = (
        "remove or rename one of them"
        if isinstance(exc, DuplicateKeyError)
        else "fix the YAML syntax there"
    )
    problem = ", ".join(part for part in (exc.context, exc.problem) if part)
    return ConfigError(f"{where}: {at}invalid YAML: {problem or 'syntax error'}; {fix}")


# --- validation errors --------------------------------------------------------------------

_EXPECTED = {
    "string_type": "a string",
    "dict_type": "a mapping",
    "list_type": "a list",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
}
_BOUNDS = {"greater_than": ">", "greater_than_equal": ">="}
_TYPE_FIX = {
    "databases": "write one entry per database, like 'main: {dsn: ...}'",
    "databases.*": "put the DSN under a dsn key, like 'main: {dsn: postgresql://app@db/app}'",
    "databases.*.dsn": "write the DSN as a quoted string",
    "targets": "write a list with one '- name: ...' item per target",
    "targets[]": "write the target as a mapping with name and url keys",
    "targets[].name": "write the name as a quoted string",
    "targets[].url": "write the URL as a quoted string",
    "targets[].database": "write the name of one of the databases",
}
_MISSING_FIX = {
    "databases.*.dsn": "add 'dsn: postgresql://app@db:5432/app'",
    "targets[].name": "add 'name: orders-api' (unique across targets)",
    "targets[].url": "add 'url: http://orders-api:8000/metrics'",
}


def translate_validation_error(
    where: str, exc: ValidationError, data: object, root: type[BaseModel]
) -> ConfigError:
    """Turn pydantic's errors from validating `data` as `root` into one line about the first.

    The line counts the rest; a DSN problem comes back as `DsnError`.
    """
    errors = exc.errors(include_url=False)
    first = errors[0]
    message = f"{where}: {_describe_error(first, data, root)}"
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more)"
    error_class = DsnError if first["type"] == INVALID_DSN else ConfigError
    return error_class(" ".join(message.splitlines()))


def _describe_error(error: ErrorDetails, data: object, root: type[BaseModel]) -> str:
    """Return "path: problem; fix" for one pydantic error, without quoting string input."""
    loc, kind, value = error["loc"], error["type"], error["input"]
    ctx = error.get("ctx") or {}
    if kind in (INVALID, INVALID_DSN):
        return f"{ctx.get('path') or _render_path(loc, data)}: {ctx['detail']}"
    if kind == "invalid_key" or (loc and loc[-1] == "[key]"):
        # The offending key is the last item of `loc` (then "[key]" for a dict's keys).
        key_loc = loc[:-1] if kind == "invalid_key" else loc[:-2]
        key = loc[-1] if kind == "invalid_key" else loc[-2]
        parent = _render_path(key_loc, data)
        return f"{parent + ': ' if parent else ''}key {key!r} {_key_problem(kind, key)}"
    path, schema = _render_path(loc, data), _walk_schema(loc, root)[0]
    if kind == "missing":
        return f"{path}: required key is missing; {_MISSING_FIX.get(schema, 'add it')}"
    if kind == "extra_forbidden":
        allowed = _allowed_keys(loc[:-1], root)
        hint = did_you_mean(str(loc[-1]), allowed)
        return f"{path}: unknown key; {hint}allowed keys here: {', '.join(allowed)}"
    if kind == "string_pattern_mismatch":
        return f"{path}: name {value!r} {_name_problem(str(value))}"
    if kind in _BOUNDS:
        bound = ctx.get("gt", ctx.get("ge"))
        return f"{path}: got {describe_value(value)}; give a number {_BOUNDS[kind]} {bound}"
    if kind in _EXPECTED:
        fix = _TYPE_FIX.get(schema, "write it as a quoted string")
        return f"{path}: expected {_EXPECTED[kind]}, got {describe_value(value)}; {fix}"
    return f"{path}: {error['msg']}; see docs/config.md"


def _key_problem(kind: str, key: object) -> str:
    if kind == "string_pattern_mismatch":
        return _name_problem(str(key))
    return f"is not a string; write it in quotes, like {str(key)!r}"


def _name_problem(name: str) -> str:
    """Say why `name` is not a valid name, to follow "name 'x' "."""
    if not name:
        return "is empty; use a name like 'orders-api'"
    suggestion = re.sub(r"[^A-Za-z0-9_.-]", "_", name)
    return f"{_NAME_RULE}; rename it, e.g. {suggestion!r}"


def _render_path(loc: tuple[int | str, ...], data: object) -> str:
    """Render `loc` as ``databases.main.dsn`` or ``targets[1].url``, indexing lists only."""
    out, node = "", data
    for item in loc:
        if isinstance(node, list) and isinstance(item, int):
            out += f"[{item}]"
            node = node[item] if 0 <= item < len(node) else None
        else:
            out += f".{item}" if out else str(item)
            node = node.get(item) if isinstance(node, dict) else None
    return out


def _allowed_keys(loc: tuple[int | str, ...], root: type[BaseModel]) -> list[str]:
    model = _walk_schema(loc, root)[1]
    if isinstance(model, type) and issubclass(model, BaseModel):
        return list(model.model_fields)
    return []


def _walk_schema(loc: tuple[int | str, ...], root: type[BaseModel]) -> tuple[str, object]:
    """Follow `loc` from `root`; return its schema key, e.g. ``targets[].url``, and its type."""
    key = ""
    node: object = root
    for item in loc:
        origin = get_origin(node)
        if isinstance(node, type) and issubclass(node, BaseModel):
            field = node.model_fields.get(str(item))
            if field is None:
                return key, None
            key, node = f"{key}.{item}" if key else str(item), field.annotation
        elif origin is dict:
            key, node = f"{key}.*", get_args(node)[1]
        elif origin is list:
            key, node = f"{key}[]", get_args(node)[0]
        else:
            return key, None
    return key, node
