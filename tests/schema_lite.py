"""A validator for the part of JSON Schema (draft 2020-12) that docs/report.schema.json uses: type, const,
enum, minimum, required, properties, additionalProperties, items, anyOf and local $ref. Anything else in the
schema is an error, so the schema cannot quietly use a keyword nothing checks."""

from __future__ import annotations

KNOWN = {"$schema", "$id", "$defs", "title", "description", "type", "const", "enum", "minimum", "required",
         "properties", "additionalProperties", "items", "anyOf", "$ref"}
TYPES = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}


def _is(value, name: str) -> bool:
    if name in ("integer", "number"):
        ok = isinstance(value, int) or (name == "number" and isinstance(value, float))
        return ok and not isinstance(value, bool)
    return isinstance(value, TYPES[name])


def errors(value, schema: dict, root: dict | None = None, where: str = "$") -> list[str]:
    """Every place where `value` breaks `schema`, as 'path: reason' (empty: valid)."""
    root = schema if root is None else root
    unknown = set(schema) - KNOWN
    if unknown:
        raise ValueError(f"schema at {where} uses keywords this validator does not check: {sorted(unknown)}")
    if "$ref" in schema:
        ref = schema["$ref"]
        assert ref.startswith("#/"), ref
        target = root
        for part in ref[2:].split("/"):
            target = target[part]
        return errors(value, target, root, where)
    out: list[str] = []
    if "type" in schema:
        names = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if not any(_is(value, n) for n in names):
            return [f"{where}: expected {' or '.join(names)}, got {type(value).__name__}"]
    if "const" in schema and value != schema["const"]:
        out.append(f"{where}: expected {schema['const']!r}, got {value!r}")
    if "enum" in schema and value not in schema["enum"]:
        out.append(f"{where}: {value!r} is not one of {schema['enum']}")
    if "minimum" in schema and isinstance(value, (int, float)) and value < schema["minimum"]:
        out.append(f"{where}: {value} < {schema['minimum']}")
    if "anyOf" in schema:
        tries = [errors(value, s, root, where) for s in schema["anyOf"]]
        if all(tries):
            out.append(f"{where}: matches none of anyOf ({'; '.join(t[0] for t in tries)})")
    if isinstance(value, dict):
        out += [f"{where}: missing {k!r}" for k in schema.get("required", ()) if k not in value]
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties", True)
        for k, v in value.items():
            if k in props:
                out += errors(v, props[k], root, f"{where}.{k}")
            elif extra is False:
                out.append(f"{where}: unexpected key {k!r}")
            elif isinstance(extra, dict):
                out += errors(v, extra, root, f"{where}.{k}")
    if isinstance(value, list) and "items" in schema:
        for n, v in enumerate(value):
            out += errors(v, schema["items"], root, f"{where}[{n}]")
    return out
