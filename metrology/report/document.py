"""The inspection result document: its JSON Schema, validation, and atomic writing.

The result document is a plain JSON-able ``dict`` (layout in ``docs/report.md`` and in
:data:`SCHEMA_PATH`, JSON Schema draft 2020-12, ``schema_version "1.0"``). The report layer reads
only this document and a :class:`metrology.report.plots.ReportArrays`; it never imports the
physics or the solver.

Validation uses ``jsonschema`` when it is installed (a test extra). Without it, a small
interpreter of the subset of JSON Schema keywords the schema uses (``type``, ``required``,
``properties``, ``additionalProperties``, ``items``, ``enum``, ``const``, ``pattern``, bounds,
``minItems``/``maxItems``, ``minLength``, ``anyOf``, local ``$ref``) gives the same answer for that
schema. Either way, non-finite numbers are refused: strict JSON cannot hold NaN or infinity.
"""

from __future__ import annotations

import importlib.util
import json
import math
import re
from functools import lru_cache
from pathlib import Path

from metrology.errors import InputError
from metrology.io.files import atomic_write_bytes, read_bounded
from metrology.limits import MAX_JSON_DEPTH, MAX_RESULT_BYTES, json_depth_exceeds

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "schemas" / "inspection_result.schema.json"
"""Path of the result document's JSON Schema (draft 2020-12)."""

SCHEMA_VERSION = "1.0"
"""The ``schema_version`` this code writes and reads."""


@lru_cache(maxsize=1)
def load_schema() -> dict:
    """Return the result document's JSON Schema as a dict (read once, cached)."""
    with open(SCHEMA_PATH, encoding="utf-8") as fh:
        return json.load(fh)


def finite_or_none(x) -> float | None:
    """``float(x)``, or None (JSON ``null``) when it is NaN or infinite: the one way every result and
    calibration document writes a non-finite number (strict JSON has no NaN); None stays None
    (a figure not computed, as in a fit that measured nothing)."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def _path_str(parts) -> str:
    out = "$"
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else f".{p}"
    return out


def _non_finite(value, parts=()):
    """Yield ``(path, value)`` for every NaN or infinite float inside ``value``."""
    if isinstance(value, float) and not math.isfinite(value):
        yield parts, value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _non_finite(v, parts + (k,))
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            yield from _non_finite(v, parts + (i,))


# ---------------------------------------------------------------- minimal fallback validator
_TYPES = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "integer": lambda v: (isinstance(v, int) and not isinstance(v, bool))
    or (isinstance(v, float) and v.is_integer()),
}


def _resolve(schema: dict, root: dict) -> dict:
    while "$ref" in schema:
        ref = schema["$ref"]
        if not ref.startswith("#/"):
            raise ValueError(f"only local $ref supported, got {ref}")
        node = root
        for key in ref[2:].split("/"):
            node = node[key]
        schema = node
    return schema


def _minimal_errors(value, schema: dict, root: dict, parts=()):
    """Yield ``(path_parts, message)`` for each violation of ``schema`` (subset interpreter)."""
    schema = _resolve(schema, root)
    if "anyOf" in schema:
        if not any(not list(_minimal_errors(value, s, root, parts)) for s in schema["anyOf"]):
            yield parts, f"{value!r} matches none of the allowed forms"
        return
    if "const" in schema and not (value == schema["const"] and type(value) is not bool):
        yield parts, f"{value!r} is not {schema['const']!r}"
        return
    if "enum" in schema and value not in schema["enum"]:
        yield parts, f"{value!r} is not one of {schema['enum']!r}"
        return
    if "type" in schema and not _TYPES[schema["type"]](value):
        yield parts, f"{value!r} is not of type {schema['type']!r}"
        return
    if isinstance(value, dict):
        props = schema.get("properties", {})
        for key in schema.get("required", []):
            if key not in value:
                yield parts, f"{key!r} is a required property"
        if schema.get("additionalProperties", True) is False:
            for key in value:
                if key not in props:
                    yield parts, f"additional property {key!r} is not allowed"
        for key, sub in props.items():
            if key in value:
                yield from _minimal_errors(value[key], sub, root, parts + (key,))
    elif isinstance(value, list):
        if len(value) < schema.get("minItems", 0):
            yield parts, f"needs at least {schema['minItems']} items"
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            yield parts, f"has more than {schema['maxItems']} items"
        if "items" in schema:
            for i, item in enumerate(value):
                yield from _minimal_errors(item, schema["items"], root, parts + (i,))
    elif isinstance(value, str):
        if len(value) < schema.get("minLength", 0):
            yield parts, f"{value!r} is too short"
        if "pattern" in schema and not re.search(schema["pattern"], value):
            yield parts, f"{value!r} does not match {schema['pattern']!r}"
    elif _TYPES["number"](value):
        if "minimum" in schema and value < schema["minimum"]:
            yield parts, f"{value!r} is less than the minimum of {schema['minimum']}"
        if "maximum" in schema and value > schema["maximum"]:
            yield parts, f"{value!r} is greater than the maximum of {schema['maximum']}"
        if "exclusiveMinimum" in schema and value <= schema["exclusiveMinimum"]:
            yield parts, f"{value!r} is not greater than {schema['exclusiveMinimum']}"


def document_errors(doc, use_jsonschema: bool | None = None) -> list[str]:
    """Return every problem of a result document, as ``"$.path: message"`` strings.

    Parameters
    ----------
    doc : dict
        The result document.
    use_jsonschema : bool or None
        ``None`` (default): use ``jsonschema`` if it is installed, else the minimal validator.
        ``True``/``False`` force one or the other (``True`` fails if it is not installed).

    Returns
    -------
    list of str
        Empty when the document is valid.
    """
    schema = load_schema()
    if use_jsonschema is None:
        use_jsonschema = importlib.util.find_spec("jsonschema") is not None  # optional, the test extra
    errors = []
    if use_jsonschema:
        import jsonschema  # lazy: optional, the test extra

        validator = jsonschema.Draft202012Validator(schema)
        for err in sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path))):
            errors.append(f"{_path_str(err.absolute_path)}: {err.message}")
    else:
        errors.extend(f"{_path_str(p)}: {m}" for p, m in _minimal_errors(doc, schema, schema))
    errors.extend(f"{_path_str(p)}: {v!r} is not allowed (strict JSON)" for p, v in _non_finite(doc))
    return errors


def validate_document(doc, source="result document", use_jsonschema: bool | None = None) -> None:
    """Check a result document against the schema; raise on the first problems found.

    Parameters
    ----------
    doc : dict
        The result document.
    source : str or path-like
        Named in the error (the file the document came from).
    use_jsonschema : bool or None
        See :func:`document_errors`.

    Raises
    ------
    InputError
        ``InputError(source, "fails the result schema 1.0: <path>: <message> ...")``.
    """
    errors = document_errors(doc, use_jsonschema=use_jsonschema)
    if errors:
        more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
        raise InputError(source, f"fails the result schema {SCHEMA_VERSION}: " + "; ".join(errors[:3]) + more)


# ---------------------------------------------------------------- reading and writing
def document_bytes(doc) -> bytes:
    """A JSON document as UTF-8 bytes (indented, strict JSON: NaN/infinity refused with
    ``ValueError``), as :func:`write_json_atomic` writes it."""
    return (json.dumps(doc, indent=2, allow_nan=False, ensure_ascii=False) + "\n").encode("utf-8")


def write_json_atomic(path, doc) -> Path:
    """Write a JSON document atomically (UTF-8, indented, strict JSON).

    Uses :func:`metrology.io.atomic_write_text` (temp file in the same folder, fsync, rename).

    Parameters
    ----------
    path : str or path-like
        Destination file.
    doc : dict
        JSON-able document. NaN/infinity are refused (``ValueError``) before anything is written.

    Returns
    -------
    Path
        The destination path.
    """
    return atomic_write_bytes(path, document_bytes(doc))


def read_document(path) -> dict:
    """Read and validate a result document from a JSON file.

    Raises
    ------
    InputError
        If the file is missing or unreadable, larger than :data:`metrology.limits.MAX_RESULT_BYTES`,
        is not JSON, nests more than :data:`metrology.limits.MAX_JSON_DEPTH` deep, or fails the schema.
    """
    path = Path(path)
    raw = read_bounded(path, "result", MAX_RESULT_BYTES)
    try:
        doc = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise InputError(path, f"cannot read: {exc}") from None
    except json.JSONDecodeError as exc:
        raise InputError(path, f"not valid JSON: {exc}") from None
    except RecursionError:
        raise InputError(path, "not a result document: JSON nested too deeply") from None
    if json_depth_exceeds(doc):
        raise InputError(path, f"not a result document: JSON nested more than {MAX_JSON_DEPTH} deep")
    validate_document(doc, source=path)
    return doc
