"""The emulator's state file (pipeline/emulator/store.py): written atomically, in order,
coalesced; a bad file is refused by name."""

from __future__ import annotations

import os

import orjson
import pytest

from pipeline.emulator import store
from pipeline.errors import PipelineError


def test_the_last_snapshot_saved_is_the_one_on_disk_and_writes_coalesce(tmp_path):
    saver = store.Saver(tmp_path / store.STATE_FILE)
    try:
        for n in range(200):
            saver.save({"version": 1, "n": n})
        saver.flush()
    finally:
        saver.close()
    assert store.load(tmp_path) == {"version": 1, "n": 199}
    assert 1 <= saver.writes <= 200
    assert os.listdir(tmp_path) == [store.STATE_FILE]  # no temp file left


def test_a_write_that_fails_leaves_the_old_state_and_no_temp_file(tmp_path, monkeypatch):
    path = tmp_path / store.STATE_FILE
    store.write_atomic(path, orjson.dumps({"version": 1, "n": 1}))

    def refuse(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store.os, "replace", refuse)
    with pytest.raises(OSError):
        store.write_atomic(path, orjson.dumps({"version": 1, "n": 2}))
    assert store.load(tmp_path) == {"version": 1, "n": 1}
    assert os.listdir(tmp_path) == [store.STATE_FILE]


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"{half", "not valid JSON"), (b'{"version": 2}', "not an emulator state file (version 1)"),
     (b"[]", "not an emulator state file")],
    ids=["not-json", "other-version", "not-an-object"],
)  # fmt: skip
def test_a_bad_state_file_is_refused_by_name(tmp_path, content, message):
    (tmp_path / store.STATE_FILE).write_bytes(content)
    with pytest.raises(PipelineError) as caught:
        store.load(tmp_path)
    assert str(tmp_path / store.STATE_FILE) in str(caught.value) and message in str(caught.value)


def test_no_state_file_is_a_fresh_start(tmp_path):
    assert store.load(tmp_path) is None
