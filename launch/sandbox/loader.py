"""Load FHIR R4 resources from a folder of Bundles and NDJSON files, such as a Synthea export.

- ``*.json``: a Bundle of any type (transaction, batch, collection, searchset, …), whose
  ``entry[].resource`` are taken (nested Bundles too), or a single resource.
- ``*.ndjson``: one resource per line, as written by a Bulk Data ``$export``.
- Folders are read recursively in path order; hidden files and other suffixes are skipped.

References are made local: references to a ``fullUrl`` (``urn:uuid:…``, ``urn:oid:…`` or an
absolute URL) become ``Type/id`` everywhere in the resource tree; conditional references such as
``Practitioner?identifier=http://hl7.org/fhir/sid/us-npi|9999…`` (transaction processing rules)
become ``Type/id`` when exactly one loaded resource has that identifier and are otherwise left as
they are. A resource without an ``id`` takes the uuid of its ``fullUrl``. When the same
``Type/id`` appears twice, the later copy wins.

FHIR R4: https://hl7.org/fhir/R4/bundle.html, https://hl7.org/fhir/R4/references.html,
https://hl7.org/fhir/R4/http.html#trules, https://hl7.org/fhir/uv/bulkdata/export.html
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from launch.sandbox.errors import SandboxError

Resource = dict[str, Any]

__all__ = ["LoaderError", "load_fhir_dir"]

_SUFFIXES = (".json", ".ndjson")
_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
_LITERAL = re.compile(r"^(?:.*/)?([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})(?:/_history/[^/]+)?$")
_CONDITIONAL = re.compile(r"^([A-Z][A-Za-z]+)\?identifier=([^&]+)$")


class LoaderError(SandboxError, ValueError):
    """A file is unreadable or not FHIR; the message names the file, never its content."""

    status = 400
    code = "invalid_fhir_data"
    issue_code = "invalid"


def load_fhir_dir(path: Path) -> list[Resource]:
    """Every resource in the ``.json`` / ``.ndjson`` files under `path`, with local references."""
    root = Path(path)
    if root.is_file():
        files = [root]
    elif root.is_dir():
        files = sorted(
            p
            for p in root.rglob("*")
            if p.is_file()
            and p.suffix in _SUFFIXES
            and not any(part.startswith(".") for part in p.relative_to(root).parts)
        )
        if not files:
            raise LoaderError(f"{root.name}: no .json or .ndjson files in this folder")
    else:
        raise LoaderError(f"{root.name}: no such file or folder")
    entries: list[tuple[str | None, Resource]] = []
    for file in files:
        name = file.name if file == root else file.relative_to(root).as_posix()
        start = len(entries)
        entries.extend(_read_file(file, name))
        for n, (full_url, resource) in enumerate(entries[start:]):
            if not isinstance(resource.get("id"), str) or not _ID.match(resource["id"]):
                resource["id"] = _fallback_id(full_url, name, n)
    return _resolve(entries)


def _read_file(file: Path, name: str) -> Iterator[tuple[str | None, Resource]]:
    try:
        raw = file.read_bytes()
    except OSError as exc:
        raise LoaderError(
            f"{name}: cannot be read ({exc.strerror or type(exc).__name__})"
        ) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise LoaderError(f"{name}: not UTF-8 text") from None
    if file.suffix == ".ndjson":
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                yield from _flatten(
                    _parse(line, f"{name}, line {number}"), None, f"{name}, line {number}"
                )
    else:
        yield from _flatten(_parse(text, name), None, name)


def _parse(text: str, where: str) -> Resource:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise LoaderError(
            f"{where}: not valid JSON (line {exc.lineno}, column {exc.colno})"
        ) from None
    if not isinstance(data, dict) or not isinstance(data.get("resourceType"), str):
        raise LoaderError(f"{where}: not a FHIR resource or Bundle (no resourceType)")
    return data


def _flatten(
    resource: Resource, full_url: str | None, where: str
) -> Iterator[tuple[str | None, Resource]]:
    if resource["resourceType"] != "Bundle":
        yield full_url, resource
        return
    entries = resource.get("entry", [])
    if not isinstance(entries, list):
        raise LoaderError(f"{where}: Bundle.entry is not a list")
    for n, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise LoaderError(f"{where}: Bundle entry {n} is not an object")
        inner = entry.get("resource")
        if inner is None:  # e.g. a DELETE request or a response without a body
            continue
        if not isinstance(inner, dict) or not isinstance(inner.get("resourceType"), str):
            raise LoaderError(f"{where}: Bundle entry {n} is not a FHIR resource")
        url = entry.get("fullUrl")
        yield from _flatten(inner, url if isinstance(url, str) else None, f"{where}, entry {n}")


def _fallback_id(full_url: str | None, name: str, n: int) -> str:
    if full_url:
        tail = full_url.rsplit(":", 1)[-1].rsplit("/", 1)[-1]
        if _ID.match(tail):
            return tail
    return "gen-" + hashlib.sha256(f"{name}#{n}".encode()).hexdigest()[:16]


def _resolve(entries: list[tuple[str | None, Resource]]) -> list[Resource]:
    """Deduplicate by ``Type/id`` and rewrite references to local ``Type/id`` form."""
    by_key: dict[str, Resource] = {}
    aliases: dict[str, str] = {}
    by_id: dict[str, set[str]] = {}
    for full_url, resource in entries:
        key = f"{resource['resourceType']}/{resource['id']}"
        by_key[key] = resource
        by_id.setdefault(resource["id"], set()).add(key)
        if full_url:
            aliases[full_url] = key
    identifiers: dict[tuple[str, str], set[str]] = {}
    for key, resource in by_key.items():
        for ident in resource.get("identifier") or []:
            if isinstance(ident, dict) and isinstance(ident.get("value"), str):
                system = ident.get("system") if isinstance(ident.get("system"), str) else ""
                rtype = resource["resourceType"]
                identifiers.setdefault((rtype, f"{system}|{ident['value']}"), set()).add(key)
                identifiers.setdefault((rtype, ident["value"]), set()).add(key)

    def local(reference: str) -> str:
        if reference in aliases:
            return aliases[reference]
        if reference.startswith("#"):
            return reference
        if reference.startswith("urn:uuid:"):
            matches = by_id.get(reference[9:], set())
            return next(iter(matches)) if len(matches) == 1 else reference
        if conditional := _CONDITIONAL.match(reference):
            rtype, token = conditional.groups()
            found = identifiers.get((rtype, unquote(token)), set())
            return next(iter(found)) if len(found) == 1 else reference
        if (literal := _LITERAL.match(reference)) and f"{literal[1]}/{literal[2]}" in by_key:
            return f"{literal[1]}/{literal[2]}"
        return reference

    def rewrite(node: Any) -> None:
        if isinstance(node, dict):
            for field, value in node.items():
                if field == "reference" and isinstance(value, str):
                    node[field] = local(value)
                else:
                    rewrite(value)
        elif isinstance(node, list):
            for item in node:
                rewrite(item)

    for resource in by_key.values():
        rewrite(resource)
    return list(by_key.values())
