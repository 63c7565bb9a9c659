"""The window's folders keep their promises: state draws nothing, imports point one way, and no
module reaches for another's private names (ARCHITECTURE.md, "## The window: state, widgets,
panels, dialogs")."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

APP = Path(__file__).resolve().parents[2] / "app"
GUI_MODULES = ("PySide6.QtWidgets", "PySide6.QtGui", "pyqtgraph")
# What each folder may import from the rest of the app (imports point one way).
MAY_USE = {
    "state": {"state"},
    "widgets": {"state", "widgets"},
    "dialogs": {"state", "widgets", "dialogs"},
    "panels": {"state", "widgets", "dialogs", "panels"},
}


def _modules() -> list[Path]:
    return sorted(APP.rglob("*.py"))


def _imports(path: Path) -> list[ast.ImportFrom | ast.Import]:
    return [n for n in ast.walk(ast.parse(path.read_text(), str(path))) if isinstance(n, ast.Import | ast.ImportFrom)]


def _folder(path: Path) -> str:
    """'state', 'widgets', 'panels', 'dialogs', or '' for the top level of app/."""
    return path.parent.name if path.parent != APP else ""


def _target_folder(path: Path, node: ast.ImportFrom) -> str:
    """The app folder a relative import lands in ('' for the top level)."""
    base = path.parent
    for _ in range(node.level - 1):
        base = base.parent
    first = (node.module or "").split(".")[0]
    if base == APP:
        return first if (APP / first).is_dir() else ""
    return base.name


def test_state_imports_no_widgets_gui_or_plots() -> None:
    offenders = []
    for path in (APP / "state").rglob("*.py"):
        for node in _imports(path):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            offenders += [f"{path.relative_to(APP)}: {n}" for n in names if n.startswith(GUI_MODULES)]
    assert not offenders, offenders


def test_importing_state_loads_no_widgets_gui_or_plots() -> None:
    modules = sorted(p.stem for p in (APP / "state").glob("*.py") if p.stem != "__init__")
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}: importlib.import_module('lora_studio.app.state.' + name)\n"
        f"print(sorted(m for m in sys.modules if m.startswith({GUI_MODULES!r})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_imports_point_one_way() -> None:
    offenders = []
    for path in _modules():
        folder = _folder(path)
        if folder not in MAY_USE:
            continue  # the top level (entry points, window) may use every folder
        for node in _imports(path):
            if isinstance(node, ast.ImportFrom) and node.level:
                target = _target_folder(path, node)
                if target not in MAY_USE[folder]:
                    offenders.append(f"{path.relative_to(APP)} imports {'.' * node.level}{node.module or ''}")
    assert not offenders, offenders


def test_no_module_imports_a_private_name() -> None:
    offenders = [
        f"{path.relative_to(APP)}: {alias.name} from {'.' * node.level}{node.module or ''}"
        for path in [*_modules(), *Path(__file__).parent.glob("*.py")]
        for node in _imports(path)
        if isinstance(node, ast.ImportFrom) and node.module != "__future__"
        for alias in node.names
        if alias.name.startswith("_")
    ]
    assert not offenders, offenders


def _is_all(node: ast.stmt) -> bool:
    """``__all__ = [...]``: the one assignment a re-exporting ``__init__`` needs."""
    return isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == ["__all__"]


def test_package_inits_hold_only_a_docstring_and_re_exports() -> None:
    for init in APP.rglob("__init__.py"):
        body = ast.parse(init.read_text()).body
        assert body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant), init
        extra = [n for n in body[1:] if not isinstance(n, ast.Import | ast.ImportFrom) and not _is_all(n)]
        assert not extra, f"{init.relative_to(APP)} holds logic: {[type(n).__name__ for n in extra]}"
