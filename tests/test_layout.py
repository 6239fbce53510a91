"""The project's shape: dvc.yaml's code deps are exactly what each stage imports, stages import the library
and never the reverse, no script shadows the standard library, and both ways of running a stage work."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, run_ok, snapshot, stage_command

STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
LIBRARY = ROOT / "llmpipe"


def imported_modules(path: Path) -> set[str]:
    """The llmpipe modules a file imports, anywhere in it (a function-level import counts too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        found |= {name for name in names if name.startswith("llmpipe.") and module_file(name).is_file()}
    return found


def module_file(module: str) -> Path:
    return ROOT / (module.replace(".", "/") + ".py")


def code_closure(script: Path) -> set[str]:
    """The script and every llmpipe module it imports, directly or through another, as dvc.yaml paths.

    llmpipe/__init__.py holds only the package's docstring and version, so it is no stage's dependency.
    """
    seen: set[str] = set()
    todo = list(imported_modules(script))
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo += imported_modules(module_file(module))
    return {script.relative_to(ROOT).as_posix(), *(module_file(m).relative_to(ROOT).as_posix() for m in seen)}


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_each_stage_depends_on_exactly_the_code_it_imports(stage):
    script = Path(stage_command(stage)[1])
    declared = {dep for dep in STAGES[stage]["deps"] if dep.endswith(".py")}

    assert declared == code_closure(script)


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_each_stage_reads_the_params_section_of_its_name(stage):
    assert STAGES[stage]["params"] == [stage]


def test_the_library_never_imports_a_stage():
    for path in LIBRARY.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom | ast.Import):
                names = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
                assert not any(name.split(".")[0] == "stages" for name in names), path


def test_no_script_or_module_shadows_the_standard_library():
    names = {path.stem for folder in ("stages", "llmpipe") for path in (ROOT / folder).glob("*.py")}

    assert not names & set(sys.stdlib_module_names)


def test_the_training_api_imports_without_yaml_or_dvc():
    code = "import sys, llmpipe.data; print(sorted({'yaml', 'dvc', 'pandas'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)

    assert result.stdout.strip() == "[]"


def test_a_stage_runs_as_a_script_and_as_a_module_alike(chain_copy):
    """`python stages/window.py` (an IDE's Run button) and `python -m stages.window` give the same bytes."""
    run_ok("window", chain_copy)
    as_script = snapshot(chain_copy, "data/windows", "metrics/window.json")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    result = subprocess.run(
        [sys.executable, "-m", "stages.window", "data/tokens", "data/windows"],
        cwd=chain_copy,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert result.returncode == 0, result.stderr
    assert snapshot(chain_copy, "data/windows", "metrics/window.json") == as_script


def test_a_stage_without_its_paths_prints_its_usage(tmp_path):
    result = subprocess.run(stage_command("dataset")[:2], cwd=tmp_path, capture_output=True, text=True, timeout=120)

    assert result.returncode == 2
    assert result.stderr.startswith("error: usage: python ")
    assert result.stderr.rstrip().endswith("TOKENS_DIR WINDOWS_DIR DATASET_DIR (see dvc.yaml)")
