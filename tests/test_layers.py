"""The core does not depend on the HTTP API: call handling, transcription, ingest (Twilio,
SIPREC, Amazon Connect), recording and the Control port speak the domain vocabulary of
``callscribe.model``; only ``callscribe/api/`` turns it into the HTTP contract, and only the
modules that assemble a server or the API Lambda put the two together.

Imports are read from the source with ``ast`` (nothing is imported), so an import inside a
function or under TYPE_CHECKING counts as well."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "callscribe"

# The modules that build the HTTP app (local server, API Lambda): the one place where the API
# and the core meet.
ASSEMBLERS = {"server.py", "aws/services/api_lambda.py"}

# Named in the layering rule; listed so that a rename cannot quietly drop them from the check.
CORE = [
    "model.py",
    "calls.py",
    "live.py",
    "transcription.py",
    "recording.py",
    "control.py",
    "control_http.py",
    "twilio/gateway.py",
    "twilio/protocol.py",
    "siprec/gateway.py",
    "siprec/uas.py",
    "connect/ingest.py",
    "connect/kvs.py",
]


def _checked_modules() -> list[Path]:
    return [
        path
        for path in sorted(PACKAGE.rglob("*.py"))
        if path.relative_to(PACKAGE).parts[0] != "api"
        and path.relative_to(PACKAGE).as_posix() not in ASSEMBLERS
    ]


def _imported(path: Path, package_dir: Path = PACKAGE) -> list[tuple[int, str]]:
    """Every module ``path`` (a file under ``package_dir``) imports, made absolute, with its
    line; ``from x import y`` also yields ``x.y`` (``from callscribe import api`` imports the
    package)."""
    package = list(path.relative_to(package_dir.parent).parent.parts)
    names: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package[: len(package) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            names.append((node.lineno, base))
            names += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
    return names


def _is_api(name: str) -> bool:
    return name == "callscribe.api" or name.startswith("callscribe.api.")


def test_the_core_modules_are_checked() -> None:
    checked = {path.relative_to(PACKAGE).as_posix() for path in _checked_modules()}
    assert set(CORE) <= checked, set(CORE) - checked
    assert all((PACKAGE / name).is_file() for name in ASSEMBLERS)


@pytest.mark.parametrize(
    "path", _checked_modules(), ids=lambda path: path.relative_to(PACKAGE).as_posix()
)
def test_module_does_not_import_the_api(path: Path) -> None:
    offending = [f"line {line}: {name}" for line, name in _imported(path) if _is_api(name)]
    assert not offending, f"{path.relative_to(PACKAGE.parent)} imports the HTTP API: {offending}"


def test_every_form_of_import_is_seen(tmp_path: Path) -> None:
    """The check itself: absolute, from-package, relative and nested imports are all seen."""
    package_dir = tmp_path / "callscribe"
    module_dir = package_dir / "siprec"
    module_dir.mkdir(parents=True)
    forms = {
        "absolute.py": "import callscribe.api.schemas\n",
        "from_module.py": "from callscribe.api.schemas import Role\n",
        "from_package.py": "from callscribe import api\n",
        "relative.py": "from ..api import schemas\n",
        "nested.py": "def f():\n    from callscribe.api.app import ApiServices\n",
    }
    for name, source in forms.items():
        (module_dir / name).write_text(source)
        assert any(_is_api(n) for _, n in _imported(module_dir / name, package_dir)), name
    (module_dir / "clean.py").write_text(
        "from callscribe.model import Role\nfrom . import sdp\nimport callscribe.apiary\n"
    )
    assert not any(_is_api(n) for _, n in _imported(module_dir / "clean.py", package_dir))
