"""Small projects built by running the real stages, shared by test_window/test_dataset/test_embed/test_sweep.

Running a stage costs a subprocess (and a torch import for dataset and embed), so the chain
tokenize -> window -> dataset -> embed is run once per session on a small English corpus with the
tiny BPE from conftest, and tests that change anything work on a copy of it (`copy_project`).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import run_stage, write_params, write_ranks_file

CORPUS = """\
The lighthouse stood at the end of a narrow spit of rock, and for forty years the same family had kept
its lamp. Every evening the keeper climbed the spiral stair, trimmed the wick, polished the great lens
and wound the clockwork that turned it. Ships that passed in the night saw only the slow white beam, and
few of the sailors ever thought about the hands that kept it turning.

In the winter the storms came from the north. The waves broke over the rock and the spray reached the
gallery, a hundred feet above the sea. The keeper and his daughter listened to the wind in the chimney
and counted the seconds between the flashes, as if the light might fail whenever they stopped counting.
It never did. The oil was measured, the glass was clean, and the log was written up before dawn.

When the daughter was grown she learned to read the weather from the colour of the sky and the shape of
the clouds. She could tell a coming gale by the way the gulls flew low over the water, and she knew
which of the fishing boats would try to reach the harbour before it broke. Some evenings she rowed out
to the mainland for letters and bread, and came back with the news of the town: who had married, who had
left for the city, and which of the old boats had been sold for timber.

Years later an engineer arrived with plans for an electric lamp and a machine that would turn the lens
without anyone to wind it. The keeper read the plans twice, folded them carefully, and said nothing.
That night he climbed the stair as he always had, and the beam went out across the dark water, steady
and patient, as though it could not imagine being anything other than what it was.
"""

# The chain's parameters: small enough to be quick, chosen so that no two of them coincide.
CHAIN_WINDOW = {"max_length": 6, "stride": 3}
CHAIN_DATASET = {"batch_size": 5, "shuffle": True, "seed": 123}
CHAIN_EMBED = {"dim": 16, "context_length": 8, "seed": 123}

_built: dict[str, Path] = {}


def run_ok(name: str, cwd: Path):
    """Run a stage that is expected to succeed; fail the test with its stderr if it does not."""
    result = run_stage(name, cwd)
    assert result.returncode == 0, f"stage {name} failed:\n{result.stderr}"
    return result


def make_project(directory: Path, ranks_path: Path, overrides: dict | None = None, corpus: str = CORPUS) -> Path:
    """A project folder with data/raw/corpus.txt and params.yaml using the ranks file as tokenize.encoding."""
    raw = directory / "data" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    (raw / "corpus.txt").write_text(corpus, encoding="utf-8")
    write_params(directory, {"tokenize": {"encoding": str(ranks_path)}, **(overrides or {})})
    return directory


def copy_project(source: Path, dest: Path) -> Path:
    """A private copy of a built project (hard links become separate files), safe to modify."""
    shutil.copytree(source, dest, dirs_exist_ok=True)
    return dest


def snapshot(directory: Path, *relative: str) -> dict[str, bytes]:
    """The bytes of every file under each relative path (file or folder), to check nothing changed."""
    files = {}
    for rel in relative:
        path = directory / rel
        for file in [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file()):
            files[str(file.relative_to(directory))] = file.read_bytes()
    assert files, f"nothing to snapshot under {relative}"
    return files


def built_chain(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project on which tokenize, window, dataset and embed have run once. Read it, never modify it."""
    if "chain" not in _built:
        base = tmp_path_factory.mktemp("chain")
        ranks = write_ranks_file(base / "tiny.tiktoken")
        project = make_project(
            base / "project",
            ranks,
            {"window": CHAIN_WINDOW, "dataset": CHAIN_DATASET, "embed": CHAIN_EMBED},
        )
        for stage in ("tokenize", "window", "dataset", "embed"):
            run_ok(stage, project)
        _built["chain"] = project
    return _built["chain"]
