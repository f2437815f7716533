"""Attack on manifest validation (issue 12: "a manifest's kind names a file: schema.py opens
f'{kind}.json' from the schema package, so ../ segments reach outside it, and a null byte or a
300-character value crashes `nodemesh apply` with a traceback")."""

from __future__ import annotations

from pathlib import Path

from meshctl.main import main as cli
from validation.schema import schema_problems


def test_a_kind_is_looked_up_never_used_as_a_path() -> None:
    assert schema_problems({"kind": "HTTPRoute", "spec": {"parentRefs": 5}})  # the allowed twin
    for kind in ("../schemas/HTTPRoute", "../../pyproject", "a\x00b", "K" * 300, "/etc/passwd", ""):
        assert schema_problems({"kind": kind, "spec": {}}) is None, repr(kind)


def test_apply_of_a_bad_kind_is_a_clear_error_not_a_traceback(tmp_path: Path) -> None:
    for i, kind in enumerate(("../../x", "a\\u0000b", "K" * 300)):
        f = tmp_path / f"m{i}.json"
        f.write_text('{"apiVersion": "v1", "kind": "' + kind + '", "metadata": {"name": "x"}}')
        # No cluster at this data dir: the manifest is refused (or the missing cluster reported)
        # with an exit code, never an exception escaping the CLI.
        code = cli(["--data-dir", str(tmp_path / "none"), "apply", "-f", str(f)])
        assert code != 0, kind
