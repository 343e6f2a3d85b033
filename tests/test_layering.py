"""The imports follow the layout: arrows point down, none loops, no package imports
`orchestration`, and no first-party module is imported by name at run time (importlib)."""

from __future__ import annotations

from core.versioning import FIRST_PARTY, imported_modules
from tests.conftest import REPO

# What each package may import of the others (README, Layout).
ALLOWED = {
    "core": set(),
    "perception": {"core"},
    "assets": {"core", "perception"},
    "training": {"core", "perception"},
    "serving": {"core", "perception", "training"},
    "orchestration": {"core", "perception", "assets", "training", "serving"},
}
MAX_LINES = 500  # longer modules say why in their opening comment


def first_party_imports(path) -> set[str]:
    """Top-level first-party packages a module imports, at module level or inside functions."""
    return {module.split(".")[0] for module in imported_modules(path, REPO)}


def test_imports_point_down_the_layout():
    assert set(ALLOWED) == set(FIRST_PARTY)
    wrong = []
    for package, allowed in ALLOWED.items():
        for path in sorted((REPO / package).rglob("*.py")):
            for imported in first_party_imports(path) - allowed - {package}:
                wrong.append(f"{path.relative_to(REPO)} imports {imported}")
    assert not wrong, "\n".join(wrong)


def test_no_first_party_module_is_imported_by_name():
    for package in ALLOWED:
        for path in sorted((REPO / package).rglob("*.py")):
            assert "import_module(" not in path.read_text(), path


def test_modules_stay_readable_in_length():
    for package in [*ALLOWED, "bench"]:
        for path in sorted((REPO / package).rglob("*.py")):
            lines = path.read_text().count("\n")
            assert lines <= MAX_LINES or "longer than" in path.read_text()[:600], (path, lines)
