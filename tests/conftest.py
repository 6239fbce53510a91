"""Fixtures shared by the tests: the project's paths, ../shared, a tiny BPE, and running a stage."""

from __future__ import annotations

import base64
import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
VERDICT = SHARED / "corpus" / "the-verdict.txt"
VERDICT_SHA256 = "b41e41a68f0398a3154ae69e2e4c0e2694e17fe0d66730536837f1b01935b31f"
TIKTOKEN_CACHE = SHARED / "tiktoken-cache"

# A few merges over the 256 single bytes, enough to make multi-byte tokens out of English text.
TINY_MERGES = [b"th", b"he", b"the", b" t", b" the", b"in", b"an", b"er", b"on", b" a", b"re", b"nd", b"and", b" and"]


@pytest.fixture
def shared() -> Path:
    """../shared with the real corpus and tiktoken's GPT-2 cache; tests that need it skip without it."""
    if not VERDICT.is_file() or not TIKTOKEN_CACHE.is_dir():
        pytest.skip("../shared (the real corpus and tiktoken's GPT-2 cache) is not beside the project")
    return SHARED


@pytest.fixture
def gpt2_cache(shared, monkeypatch) -> Path:
    """Point tiktoken at the offline GPT-2 cache in ../shared."""
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(TIKTOKEN_CACHE))
    return TIKTOKEN_CACHE


def write_ranks_file(path: Path, merges: list[bytes] = TINY_MERGES) -> Path:
    """A .tiktoken ranks file: every single byte, then `merges` in rank order."""
    tokens = [bytes([b]) for b in range(256)] + merges
    path.write_text("".join(f"{base64.b64encode(t).decode()} {rank}\n" for rank, t in enumerate(tokens)))
    return path


@pytest.fixture
def tiny_ranks(tmp_path) -> Path:
    return write_ranks_file(tmp_path / "tiny.tiktoken")


def default_params() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def write_params(directory: Path, overrides: dict | None = None) -> dict:
    """Write params.yaml into `directory`: the project's defaults, each section updated by `overrides`."""
    params = copy.deepcopy(default_params())
    for section, values in (overrides or {}).items():
        params.setdefault(section, {}).update(values)
    (directory / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return params


def run_stage(name: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `python -m stages.<name>` in `cwd` as dvc.yaml does, with the project importable."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", f"stages.{name}"], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=300
    )


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    """A bad input ends in a non-zero exit and one `error:` line naming the problem, no traceback."""
    assert result.returncode != 0, result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
