"""Reading manifests: files, directories and stdin into documents, with every problem located.

A YAML stream is split at ``---`` lines before parsing, so one malformed document is reported
with its file, index and line while the others are still parsed and checked (a single
``yaml.safe_load_all`` would stop at the first error). Empty documents are skipped and not
numbered; ``index`` is 0-based among the non-empty documents of a file. A ``kind: List`` is
expanded into its items.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import msgspec
import yaml

from nodemesh.errors import ManifestError

__all__ = ["Document", "line_of", "parse_text", "read_sources"]

_SEPARATOR = re.compile(r"^---(\s|$)")
_SUFFIXES = (".yaml", ".yml", ".json")


class Document(msgspec.Struct, kw_only=True):
    source: str
    index: int
    line: int  # 1-based line of the document's first line in its file
    obj: dict[str, Any]
    text: str = ""  # the document's YAML, for locating fields
    item: int = -1  # position inside a `kind: List`, else -1


def _split(text: str) -> list[tuple[int, str]]:
    """(first line number, text) of each document in a YAML stream."""
    docs: list[tuple[int, str]] = []
    start, buf = 1, list[str]()
    for no, line in enumerate(text.splitlines(keepends=True), start=1):
        if _SEPARATOR.match(line):
            docs.append((start, "".join(buf)))
            rest = line[3:].strip()
            start, buf = (no, [rest + "\n"]) if rest and not rest.startswith("#") else (no + 1, [])
        elif line.rstrip() == "...":
            continue
        else:
            buf.append(line)
    docs.append((start, "".join(buf)))
    return docs


def _blank(text: str) -> bool:
    return all(not ln.strip() or ln.lstrip().startswith("#") for ln in text.splitlines())


def parse_text(source: str, text: str) -> tuple[list[Document], list[ManifestError]]:
    docs: list[Document] = []
    errors: list[ManifestError] = []
    index = 0
    chunks = [(1, text)] if source.endswith(".json") else _split(text)
    for start, chunk in chunks:
        if _blank(chunk):
            continue
        try:
            obj = json.loads(chunk) if source.endswith(".json") else yaml.safe_load(chunk)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
            line = start + (mark.line if mark is not None else 0)
            problem = getattr(e, "problem", None) or str(e).splitlines()[0]
            errors.append(ManifestError(source, index, "", f"line {line}: malformed YAML: {problem}"))
            index += 1
            continue
        except ValueError as e:
            errors.append(ManifestError(source, index, "", f"malformed JSON: {e}"))
            index += 1
            continue
        if not isinstance(obj, dict):
            errors.append(
                ManifestError(
                    source, index, "", f"line {start}: a manifest must be a mapping, not {type(obj).__name__}"
                )
            )
        elif obj.get("kind") == "List" and isinstance(obj.get("items"), list):
            for j, item in enumerate(obj["items"]):
                if isinstance(item, dict):
                    docs.append(Document(source=source, index=index, line=start, obj=item, item=j))
                else:
                    errors.append(ManifestError(source, index, f"items[{j}]", "must be a mapping"))
        else:
            docs.append(Document(source=source, index=index, line=start, obj=obj, text=chunk))
        index += 1
    return docs, errors


def _files(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.is_file() and p.suffix in _SUFFIXES)
    return [path]


def read_sources(paths: list[str]) -> tuple[list[Document], list[ManifestError]]:
    """Every document of every file (``-`` is stdin; a directory means its manifest files)."""
    docs: list[Document] = []
    errors: list[ManifestError] = []
    for raw in paths:
        if raw == "-":
            d, e = parse_text("-", sys.stdin.read())
            docs += d
            errors += e
            continue
        path = Path(raw)
        if not path.exists():
            errors.append(ManifestError(raw, 0, "", "no such file or directory"))
            continue
        for f in _files(path):
            try:
                text = f.read_text()
            except (OSError, UnicodeDecodeError) as e:
                errors.append(ManifestError(str(f), 0, "", f"cannot read: {e}"))
                continue
            found, errs = parse_text(str(f), text)
            docs += found
            errors += errs
    return docs, errors


def line_of(text: str, field: str) -> int | None:
    """0-based line (within ``text``) of a field path like ``spec.rules[0].matches``, best effort."""
    try:
        node: Any = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return None
    line = None
    for part in re.findall(r"[^.\[\]]+|\[\d+\]", field):
        if node is None:
            break
        line = node.start_mark.line
        if part.startswith("["):
            idx = int(part[1:-1])
            node = node.value[idx] if isinstance(node, yaml.SequenceNode) and idx < len(node.value) else None
            if node is not None:
                line = node.start_mark.line
        elif isinstance(node, yaml.MappingNode):
            match = [(k, v) for k, v in node.value if getattr(k, "value", None) == part]
            node = match[0][1] if match else None
            if match:
                line = match[0][0].start_mark.line
        else:
            node = None
    return line
