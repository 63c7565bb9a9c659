"""Project contracts: import boundaries, packaging, the README's promises and the CLI."""

import ast
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
QT_MODULES = {"PySide6", "pyqtgraph", "shiboken6"}


def _imports(path: Path) -> list[tuple[str, int]]:
    """(absolute module name, relative level) of every import in a file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, 0) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            found.append((node.module or "", node.level))
    return found


def test_core_never_imports_qt() -> None:
    offenders = [
        f"{path.relative_to(ROOT)}: {name}"
        for path in (ROOT / "core").rglob("*.py")
        for name, _ in _imports(path)
        if name.split(".")[0] in QT_MODULES
    ]
    assert not offenders, offenders


def test_core_import_loads_no_qt_at_runtime() -> None:
    code = "import sys, lora_studio.core; print(sorted(m for m in sys.modules if m.split('.')[0] in %r))" % (
        QT_MODULES,
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_app_reaches_core_only_through_its_public_api() -> None:
    offenders = []
    for path in (ROOT / "app").rglob("*.py"):
        for name, level in _imports(path):
            inner_core = name.startswith("lora_studio.core.") or (level >= 2 and name.startswith("core"))
            if inner_core:
                offenders.append(f"{path.relative_to(ROOT)}: {'.' * level}{name}")
    assert not offenders, offenders


def test_every_subpackage_is_installed() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    for prefix, folder in config["package-dir"].items():
        for init in (ROOT / folder).rglob("__init__.py"):
            relative = init.parent.relative_to(ROOT / folder).parts
            package = ".".join((prefix, *relative))
            assert package in listed, f"{package} is missing from [tool.setuptools] packages in pyproject.toml"


def _readme() -> str:
    return (ROOT / "README.md").read_text()


def test_ci_runs_exactly_the_readme_test_command() -> None:
    blocks = re.findall(r"```bash\n(.*?)```", _readme(), re.S)
    assert "make test" in [b.strip() for b in blocks], "the README gives `make test` as the test command"
    ci = [line for line in (ROOT / ".ci/run").read_text().splitlines() if line and not line.startswith("#")]
    assert ci[-1].strip() == "make test"


def test_readme_python_example_runs_as_printed(capsys: pytest.CaptureFixture[str]) -> None:
    code = re.search(r"## The Python API\n\n```python\n(.*?)```", _readme(), re.S).group(1)
    expected = [c.strip() for c in re.findall(r"print\(.*#\s*(.+)$", code, re.M)]
    exec(compile(code, "README.md", "exec"), {})
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed == expected


def test_cli_help_and_describe() -> None:
    from lora_studio.core.cli import main

    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    script = Path(sys.executable).with_name("lora-studio")
    out = subprocess.run([str(script), "--help"], capture_output=True, text=True, check=True).stdout
    assert "demo" in out and "describe" in out


def test_cli_describe_and_its_errors(capsys: pytest.CaptureFixture[str]) -> None:
    from lora_studio.core.cli import main

    assert main(["describe", "torchvision:resnet18", "--targets", r"layer4\..*conv\d", "--regex", "--depth", "1"]) == 0
    out = capsys.readouterr().out
    assert "11,689,512 parameters; 4 layers targeted" in out  # resnet18's published size
    assert main(["describe", "torchvision:resnet_nope"]) == 2
    assert "torchvision has no model 'resnet_nope'" in capsys.readouterr().err
    assert main(["describe", "torchvision:resnet18", "--targets", "bn1", "--depth", "0"]) == 1
    assert "'bn1' is a BatchNorm2d" in capsys.readouterr().err


def test_digits_demo_recovers_accuracy(tmp_path: Path) -> None:
    from lora_studio.core.demo import run_demo

    outcome = run_demo("digits", output_dir=tmp_path, steps=200)
    before, after = outcome["before"]["accuracy"], outcome["after"]["accuracy"]
    print(f"rotated digits: base {before:.1%}, with LoRA {after:.1%}")
    assert before < 0.3, "the rotated domain defeats the pretrained base"
    assert after > before + 0.5, "LoRA recovers it"


def test_the_import_contracts_hold() -> None:
    """The package graph's boundaries, as import-linter contracts in pyproject.toml (layers, forbidden,
    independence): core never imports Qt, app reaches core only through its public API, each core
    package imports only the packages below it."""
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(lint), str(ROOT / "pyproject.toml")], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


def test_package_init_files_only_re_export() -> None:
    """A package's ``__init__.py`` holds a docstring, imports and ``__all__`` (``__version__`` in core's),
    so every piece of logic has a module of its own that a newcomer can find by name."""
    allowed_names = {"__all__", "__version__"}
    offenders = []
    for init in (ROOT / "core").rglob("__init__.py"):  # app's: tests/app/test_app_layout.py
        for node in ast.parse(init.read_text()).body:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            docstring = isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
            if docstring and isinstance(node.value.value, str):
                continue
            targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
            if isinstance(node, (ast.Assign, ast.AugAssign)) and all(
                isinstance(t, ast.Name) and t.id in allowed_names for t in targets
            ):
                continue
            offenders.append(f"{init.relative_to(ROOT)}:{node.lineno} ({type(node).__name__})")
    assert not offenders, offenders


def test_core_top_level_holds_only_the_public_api_and_entry_points() -> None:
    """Everything else lives in a package named after the question it answers (ARCHITECTURE.md)."""
    top = sorted(p.name for p in (ROOT / "core").glob("*.py"))
    assert top == ["__init__.py", "__main__.py", "cli.py", "demo.py", "run_config.py"], top


def test_every_citation_of_the_architecture_map_names_a_real_section() -> None:
    """Comments cite ARCHITECTURE.md as ``ARCHITECTURE.md, "Section"``; the section must exist."""
    headings = {line.lstrip("#").strip() for line in (ROOT / "ARCHITECTURE.md").read_text().splitlines()
                if line.startswith("## ")}  # fmt: skip
    cited = []
    for folder in ("core", "app", "tests", "bench", "packaging"):
        for path in (ROOT / folder).rglob("*.py"):
            if path == Path(__file__).resolve():
                continue
            for section in re.findall(r'ARCHITECTURE\.md[,:]?\s*"(?:## )?([^"]+)"', path.read_text()):
                cited.append((path.relative_to(ROOT), " ".join(section.split())))
    assert cited, "the map is cited somewhere"
    missing = [f"{path}: {section!r}" for path, section in cited if section not in headings]
    assert not missing, missing
