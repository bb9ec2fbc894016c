"""Env files along `extends` (pipeline/envfiles.py): merged deeply, each key's file noted, and
every mistake named with the file it is in."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline import envfiles
from pipeline.errors import PipelineError


def env(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    return path


def test_extends_merges_tables_and_names_who_set_each_key(tmp_path):
    env(
        tmp_path,
        "base",
        '[start]\nport = 1\nhost = "127.0.0.1"\n[gates.week3]\nerrors = ["count == 0"]\n',
    )
    top = env(tmp_path, "top", 'extends = "base"\n[start]\nport = 2\n')
    merged, sources = envfiles.load_raw(top, ())
    assert merged["start"] == {"port": 2, "host": "127.0.0.1"}
    assert merged["extends"] == "base"
    assert sources["start.port"] == str(top.resolve())
    assert sources["start.host"] == str((tmp_path / "base.toml").resolve())


def test_a_name_is_found_beside_the_file_then_among_the_built_in_envs(tmp_path):
    beside = env(tmp_path, "local", "")
    top = env(tmp_path, "top", 'extends = "local"\n')
    assert envfiles.parent_of(top, "local") == beside
    assert envfiles.parent_of(beside, "local") == envfiles.ENVS_DIR / "local.toml"  # not itself
    assert envfiles.parent_of(top, "sub/x.toml") == tmp_path / "sub/x.toml"


@pytest.mark.parametrize(
    ("files", "start", "message"),
    [
        ({"a": 'extends = "b"\n', "b": 'extends = "a"\n'}, "a", "extends loops back on itself (a.toml → b.toml → a.toml)"),
        ({"a": 'extends = "nowhere-at-all"\n'}, "a", "key extends: "),
        ({"a": "extends = 3\n"}, "a", "key extends: expected an env name or path, got 3"),
        ({"a": "[start\n"}, "a", "a.toml"),
    ],
    ids=["loop", "unknown-parent", "not-a-name", "not-toml"],
)  # fmt: skip
def test_mistakes_are_named_with_their_file(tmp_path, files, start, message):
    for name, text in files.items():
        env(tmp_path, name, text)
    with pytest.raises(PipelineError) as caught:
        envfiles.load_raw(tmp_path / f"{start}.toml", ())
    assert message in str(caught.value)


def test_a_bad_threshold_names_the_file_that_set_it(tmp_path):
    env(tmp_path, "base", '[gates.week3]\nerrors = ["count === 0"]\n')
    top = env(tmp_path, "top", 'extends = "base"\n[gates.week3]\n"http.success" = ["rate == 1"]\n')
    with pytest.raises(PipelineError) as caught:
        envfiles.gate_spec(top, "week3")
    assert str((tmp_path / "base.toml").resolve()) in str(caught.value)
    assert envfiles.gate_spec(
        env(tmp_path, "ok", '[gates.week3]\nerrors = ["count == 0"]\n'), "week3"
    )
