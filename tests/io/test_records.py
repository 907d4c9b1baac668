"""Records written atomically survive a concurrent run clearing their folder at any moment."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from cvplgraph.io import records


@pytest.mark.parametrize("moment", ["before the write", "between the write and the rename"])
def test_a_record_is_written_though_its_folder_is_removed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          moment: str) -> None:  # fmt: skip
    """A run that committed the same key clears ``partial/<key>`` while another still records blocks there."""
    folder = tmp_path / "partial" / "key" / "layout" / "0"
    folder.mkdir(parents=True)
    real = records._write_file
    calls = []

    def clearing(path: str, body: bytes) -> None:
        calls.append(path)
        if len(calls) == 1 and moment == "before the write":
            shutil.rmtree(tmp_path / "partial")
        real(path, body)
        if len(calls) == 1 and moment == "between the write and the rename":
            shutil.rmtree(tmp_path / "partial")

    monkeypatch.setattr(records, "_write_file", clearing)
    records.mark(str(folder / "0-1_0-1_0-1"), {"0.0.0": "00000001"})
    assert json.loads((folder / "0-1_0-1_0-1").read_text()) == {"0.0.0": "00000001"}
    assert len(calls) == 2
    assert [p.name for p in folder.iterdir()] == ["0-1_0-1_0-1"]  # no temporary file left behind


def test_a_folder_that_keeps_vanishing_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def vanishing(path: str, body: bytes) -> None:
        raise FileNotFoundError(2, "No such file or directory", path)

    monkeypatch.setattr(records, "_write_file", vanishing)
    with pytest.raises(FileNotFoundError):
        records.mark(str(tmp_path / "gone" / "0-1"), {})
