"""llmpipe.params, llmpipe.files and llmpipe.cli: params checking, atomic outputs, metrics and one-line errors."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from conftest import ROOT

from llmpipe.cli import run
from llmpipe.errors import PipelineError
from llmpipe.files import output_dir, read_json, write_file_atomic, write_json
from llmpipe.formats import write_metrics
from llmpipe.params import boolean, load_params, non_negative_int, positive_int, text

WINDOW_SCHEMA = {"max_length": positive_int, "stride": positive_int}


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every entry under `folder`: files by their bytes, folders as None."""
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None) for p in sorted(folder.rglob("*"))}


def hidden_siblings(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir() if p.name.startswith("."))


def write_yaml(tmp_path: Path, content: str | bytes) -> Path:
    path = tmp_path / "params.yaml"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


# load_params


def test_load_params_returns_the_checked_section(tmp_path):
    path = write_yaml(
        tmp_path,
        "other:\n  x: 1\nsection:\n  size: 3\n  offset: 0\n  shuffle: false\n  name: gpt2\n",
    )
    schema = {"size": positive_int, "offset": non_negative_int, "shuffle": boolean, "name": text}

    assert load_params("section", schema, path) == {"size": 3, "offset": 0, "shuffle": False, "name": "gpt2"}


def test_load_params_reads_params_yaml_in_the_working_directory(tmp_path, monkeypatch):
    write_yaml(tmp_path, "window:\n  max_length: 4\n  stride: 2\n")
    monkeypatch.chdir(tmp_path)

    assert load_params("window", WINDOW_SCHEMA) == {"max_length": 4, "stride": 2}


def test_load_params_accepts_the_projects_own_params_yaml():
    assert load_params("window", WINDOW_SCHEMA, ROOT / "params.yaml") == {"max_length": 4, "stride": 1}


def test_misspelled_key_is_named_with_the_expected_keys(tmp_path):
    path = write_yaml(tmp_path, "window:\n  max_length: 4\n  strid: 1\n")

    with pytest.raises(PipelineError) as error:
        load_params("window", WINDOW_SCHEMA, path)

    message = str(error.value)
    assert "unknown key window.strid" in message
    assert "window.max_length, window.stride" in message


def test_missing_key_is_named(tmp_path):
    path = write_yaml(tmp_path, "window:\n  max_length: 4\n")

    with pytest.raises(PipelineError, match=r"missing key window\.stride"):
        load_params("window", WINDOW_SCHEMA, path)


@pytest.mark.parametrize(
    "content",
    [
        "fetch:\n  url: x\n",  # no window section at all
        "window: 4\n",  # not a mapping
        "window:\n",  # empty section
        "",  # empty file
        "- a\n- b\n",  # top level is a list
    ],
    ids=["absent", "scalar", "empty-section", "empty-file", "top-level-list"],
)
def test_missing_section_is_an_error_naming_it(tmp_path, content):
    path = write_yaml(tmp_path, content)

    with pytest.raises(PipelineError, match=r"no 'window:' mapping"):
        load_params("window", WINDOW_SCHEMA, path)


@pytest.mark.parametrize(
    "content",
    ["window: [1, 2\n", "window:\n  max_length: 4\n stride: 1\n", b"window:\n  name: caf\xe9\n"],
    ids=["unclosed-list", "bad-indent", "not-utf8"],
)
def test_params_that_are_not_yaml_give_a_one_line_error(tmp_path, content):
    path = write_yaml(tmp_path, content)

    with pytest.raises(PipelineError, match=r"is not valid YAML") as error:
        load_params("window", WINDOW_SCHEMA, path)

    assert "\n" not in str(error.value)


def test_missing_params_file_is_an_error(tmp_path):
    with pytest.raises(PipelineError, match=r"not found"):
        load_params("window", WINDOW_SCHEMA, tmp_path / "params.yaml")


def test_wrong_type_names_the_dotted_key_and_the_value(tmp_path):
    path = write_yaml(tmp_path, "window:\n  max_length: 0\n  stride: 1\n")

    with pytest.raises(PipelineError) as error:
        load_params("window", WINDOW_SCHEMA, path)

    assert "window.max_length must be a positive integer, got 0" in str(error.value)


# The checkers


@pytest.mark.parametrize("value", [0, -1, 1.5, 4.0, "4", True, False, None, [4]])
def test_positive_int_rejects(value):
    with pytest.raises(PipelineError) as error:
        positive_int("window.stride", value)

    assert "window.stride" in str(error.value)
    assert repr(value) in str(error.value)


@pytest.mark.parametrize("value", [1, 2, 10**12])
def test_positive_int_accepts(value):
    assert positive_int("k", value) == value


@pytest.mark.parametrize("value", [-1, 0.0, 1.5, "0", True, False, None])
def test_non_negative_int_rejects(value):
    with pytest.raises(PipelineError, match=r"k must be a non-negative integer"):
        non_negative_int("k", value)


@pytest.mark.parametrize("value", [0, 1, 123])
def test_non_negative_int_accepts(value):
    assert non_negative_int("k", value) == value


@pytest.mark.parametrize("value", [0, 1, "true", "yes", None])
def test_boolean_rejects(value):
    with pytest.raises(PipelineError, match=r"k must be true or false"):
        boolean("k", value)


@pytest.mark.parametrize("value", [True, False])
def test_boolean_accepts(value):
    assert boolean("k", value) is value


@pytest.mark.parametrize("value", ["", "   ", 5, 1.5, True, None, ["gpt2"]])
def test_text_rejects(value):
    with pytest.raises(PipelineError, match=r"k must be a non-empty string"):
        text("k", value)


def test_text_accepts_a_string():
    assert text("k", "gpt2") == "gpt2"


# output_dir


@pytest.fixture
def old_output(tmp_path) -> Path:
    out = tmp_path / "data" / "out"
    (out / "sub").mkdir(parents=True)
    (out / "old.txt").write_bytes(b"old\x00bytes")
    (out / "sub" / "deep.txt").write_text("deep")
    return out


def test_output_dir_replaces_the_old_folder_whole(old_output):
    with output_dir(old_output) as tmp:
        assert tmp.parent == old_output.parent
        assert list(tmp.iterdir()) == []
        (tmp / "new.txt").write_text("new")

    assert snapshot(old_output) == {"new.txt": b"new"}
    assert hidden_siblings(old_output) == []


def test_output_dir_creates_a_missing_folder_and_its_parents(tmp_path):
    out = tmp_path / "a" / "b" / "out"

    with output_dir(str(out)) as tmp:
        (tmp / "x").write_text("x")

    assert snapshot(out) == {"x": b"x"}
    assert hidden_siblings(out) == []


@pytest.mark.parametrize("exception", [RuntimeError, PipelineError, KeyboardInterrupt])
def test_error_in_the_block_keeps_the_old_folder_and_removes_the_temp_folder(old_output, exception):
    before = snapshot(old_output)

    with pytest.raises(exception):
        with output_dir(old_output) as tmp:
            (tmp / "old.txt").write_text("half-written")
            (tmp / "partial.txt").write_text("partial")
            raise exception("boom")

    assert snapshot(old_output) == before
    assert not tmp.exists()
    assert hidden_siblings(old_output) == []


def test_error_when_there_was_no_old_folder_leaves_nothing(tmp_path):
    out = tmp_path / "out"

    with pytest.raises(RuntimeError):
        with output_dir(out) as tmp:
            (tmp / "x").write_text("x")
            raise RuntimeError

    assert list(tmp_path.iterdir()) == []


def test_output_dir_clears_leftovers_of_a_killed_run(old_output):
    parent = old_output.parent
    (parent / ".out.tmp-123").mkdir()
    (parent / ".out.tmp-123" / "half.txt").write_text("half")
    (parent / ".out.old-456").mkdir()
    (parent / ".out.tmp-789").write_text("a stray file")
    (parent / ".other.tmp-123").mkdir()  # another output's leftovers are not ours to clear

    with output_dir(old_output) as tmp:
        assert sorted(p.name for p in parent.iterdir()) == [".other.tmp-123", tmp.name, "out"]
        (tmp / "new.txt").write_text("new")

    assert sorted(p.name for p in parent.iterdir()) == [".other.tmp-123", "out"]
    assert snapshot(old_output) == {"new.txt": b"new"}


# write_file_atomic, write_metrics, read_json


def test_write_file_atomic_writes_and_leaves_no_temp_file(tmp_path):
    path = tmp_path / "deep" / "file.bin"

    write_file_atomic(path, b"first")
    write_file_atomic(path, b"second\x00")

    assert path.read_bytes() == b"second\x00"
    assert sorted(p.name for p in path.parent.iterdir()) == ["file.bin"]


def test_write_file_atomic_removes_its_temp_file_when_the_rename_fails(tmp_path):
    target = tmp_path / "taken"
    (target / "inside").mkdir(parents=True)  # a non-empty folder cannot be replaced by a file

    with pytest.raises(OSError):
        write_file_atomic(target, b"data")

    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]
    assert target.is_dir()


def test_write_metrics_writes_lists_as_json_text(tmp_path):
    write_metrics(
        tmp_path / "metrics" / "stage.json",
        {"num": 3, "ratio": 0.5, "name": "gpt2", "ids": [40, 367], "shape": (8, 4), "empty": []},
    )

    metrics = json.loads((tmp_path / "metrics" / "stage.json").read_text())
    assert metrics == {"num": 3, "ratio": 0.5, "name": "gpt2", "ids": "[40, 367]", "shape": "[8, 4]", "empty": "[]"}
    assert json.loads(metrics["ids"]) == [40, 367]
    assert json.loads(metrics["shape"]) == [8, 4]
    assert sorted(p.name for p in (tmp_path / "metrics").iterdir()) == ["stage.json"]


def test_read_json_reads_back_what_write_json_wrote(tmp_path):
    write_json(tmp_path / "x.json", {"a": [1, 2], "b": "ü"})

    assert read_json(tmp_path / "x.json") == {"a": [1, 2], "b": "ü"}


def test_read_json_of_a_missing_file_says_to_rebuild(tmp_path):
    with pytest.raises(PipelineError, match=r"not found: run `dvc repro`"):
        read_json(tmp_path / "missing.json")


@pytest.mark.parametrize("content", [b"{not json", b"\xff\xfe"])
def test_read_json_of_a_corrupt_file_is_an_error(tmp_path, content):
    (tmp_path / "bad.json").write_bytes(content)

    with pytest.raises(PipelineError, match=r"is corrupt"):
        read_json(tmp_path / "bad.json")


# run


def test_run_turns_a_pipeline_error_into_one_line_and_exit_status_1(capsys, monkeypatch):
    def main():
        raise PipelineError("window.stride must be a positive integer")

    monkeypatch.setattr(sys, "argv", ["stages/window.py"])
    with pytest.raises(SystemExit) as exit_info:
        run(main)

    assert exit_info.value.code == 1
    assert capsys.readouterr().err == "error: window.stride must be a positive integer\n"


def test_run_lets_other_exceptions_through(monkeypatch):
    def main():
        raise ValueError("a bug, not bad input")

    monkeypatch.setattr(sys, "argv", ["stages/window.py"])
    with pytest.raises(ValueError):
        run(main)


def test_run_passes_the_command_lines_paths_and_prints_the_usage_when_they_do_not_fit(capsys, monkeypatch):
    received = []

    def main(tokens_dir: Path, windows_dir: Path):
        received.extend([tokens_dir, windows_dir])

    monkeypatch.setattr(sys, "argv", ["stages/window.py", "data/tokens", "data/windows"])
    run(main)
    assert received == [Path("data/tokens"), Path("data/windows")]

    monkeypatch.setattr(sys, "argv", ["stages/window.py", "data/tokens"])
    with pytest.raises(SystemExit) as exit_info:
        run(main)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "error: usage: python stages/window.py TOKENS_DIR WINDOWS_DIR (see dvc.yaml)\n"
