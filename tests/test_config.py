"""pipeline.config: env files, `extends`, and errors that name the file and the key."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from pipeline import config
from pipeline.errors import PipelineError


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / f"{name}.toml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def load_error(path: Path | str) -> str:
    with pytest.raises(PipelineError) as info:
        config.load_env(path)
    message = str(info.value)
    assert "\n" not in message, message  # one line that says what and where
    return message


# ---------------------------------------------------------------------------------------------
# the shipped envs


def test_local_env_loads_with_the_five_smoke_tests_and_the_gates() -> None:
    env = config.load_env("local")
    assert env.name == "local" and env.runtime == "process" and env.extends == "base"
    assert [t.name for t in env.smoke] == [
        "health_check",
        "marketplace_event",
        "pubsub_webhook",
        "metrics_endpoint",
        "ready_check",
    ]
    assert {"week2", "week3", "week4"} <= set(env.gates)
    assert env.gates["week3"]["http.latency_ms"] == ["avg < 200", "p(95) < 250"]
    assert env.gate_spec("week3").source.endswith("base.toml")
    assert env.profile("week3").rate == 10 and env.phase("week3").load_profile == "week3"
    assert env.sources["runtime"].endswith("local.toml")
    assert env.sources["start.host"].endswith("base.toml")
    assert env.start.host == "127.0.0.1"  # servers bind loopback unless an env says otherwise


def test_default_env_is_local_and_a_path_works_too() -> None:
    assert config.load_env().name == "local"
    by_path = config.load_env(str(config.ENVS_DIR / "local.toml"))
    assert by_path.gates == config.load_env("local").gates


def test_unknown_gate_and_profile_name_what_is_known() -> None:
    env = config.load_env("local")
    with pytest.raises(PipelineError, match=r"no \[gates.week9\] table \(known: .*week3"):
        env.gate_spec("week9")
    with pytest.raises(PipelineError, match=r"no load profile 'soak' .*known: .*stress"):
        env.profile("soak")


# ---------------------------------------------------------------------------------------------
# extends


GRAND = """
    description = "grand"
    [start]
    host = "127.0.0.2"
    port = 1111
    secrets = ["A", "B"]
    [load.profiles.week3]
    rate = 5
    duration_s = 10
    [[smoke]]
    name = "one"
    path = "/one"
    [[smoke]]
    name = "two"
    path = "/two"
    [gates.week3]
    "errors" = ["count == 0"]
    "memory.mb" = ["max < 100"]
"""

MIDDLE = """
    extends = "grand"
    [start]
    port = 2222
    [start.env]
    TAIEA_MODE = "test"
    [load.profiles.heavy]
    rate = 100
    duration_s = 1
"""

CHILD = """
    extends = "middle"
    description = "child"
    [start]
    secrets = ["C"]
    [[smoke]]
    name = "only"
    path = "/only"
    [gates.week3]
    "memory.mb" = ["max < 300"]
"""


def test_extends_chain_merges_tables_and_replaces_lists(tmp_path: Path) -> None:
    grand = write(tmp_path, "grand", GRAND)
    middle = write(tmp_path, "middle", MIDDLE)
    child = write(tmp_path, "child", CHILD)
    env = config.load_env(child)
    assert env.name == "child" and env.description == "child" and env.extends == "middle"
    assert env.start.host == "127.0.0.2"  # from grand, untouched below
    assert env.start.port == 2222  # middle overrides grand
    assert env.start.env == {"TAIEA_MODE": "test"}
    assert env.start.secrets == ["C"]  # a list replaces, never appends
    assert [t.name for t in env.smoke] == ["only"]
    assert set(env.load.profiles) == {"week3", "heavy"}  # tables merge
    assert env.gates["week3"] == {"errors": ["count == 0"], "memory.mb": ["max < 300"]}
    assert env.sources["start.host"] == str(grand)
    assert env.sources["start.port"] == str(middle)
    assert env.sources["start.secrets"] == str(child)
    assert env.sources["gates.week3.errors"] == str(grand)


def test_extends_by_path(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    base = write(tmp_path, "grand", GRAND)
    child = write(tmp_path / "sub", "child", f'extends = "{base}"\ndescription = "x"\n')
    assert config.load_env(child).start.port == 1111


ENVS = config.ENVS_DIR
EXTENDS_RULES = [
    # (files under tmp_path, the env file loaded, every file its chain reads)
    ({"x/mine.toml": 'extends = "base"\n'}, "x/mine.toml", ["x/mine.toml", ENVS / "base.toml"]),
    (
        {"x/base.toml": GRAND, "x/mine.toml": 'extends = "base"\n'},
        "x/mine.toml",
        ["x/mine.toml", "x/base.toml"],
    ),
    (
        {"x/local.toml": 'extends = "local"\n'},
        "x/local.toml",
        ["x/local.toml", ENVS / "local.toml", ENVS / "base.toml"],
    ),
    (
        {"x/grand.toml": GRAND, "x/mine.toml": 'extends = "grand.toml"\n'},
        "x/mine.toml",
        ["x/mine.toml", "x/grand.toml"],
    ),
    (
        {"grand.toml": GRAND, "x/sub/mine.toml": 'extends = "../../grand.toml"\n'},
        "x/sub/mine.toml",
        ["x/sub/mine.toml", "grand.toml"],
    ),
]


@pytest.mark.parametrize(
    "files, loaded, chain",
    EXTENDS_RULES,
    ids=[
        "a-name-finds-the-built-in-env",
        "a-name-beside-the-file-comes-first",
        "an-env-extending-its-own-name-gets-the-built-in",
        "a-toml-suffix-is-a-path",
        "a-relative-path-is-taken-from-the-files-folder",
    ],
)
def test_extends_a_name_or_a_path_from_an_env_file_anywhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, files: dict[str, str], loaded: str, chain: list
) -> None:
    """A user's own env file, outside envs/, extends a built-in env by name; a path is a path
    relative to the extending file (not to where the tool runs)."""
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(textwrap.dedent(text), encoding="utf-8")
    monkeypatch.chdir(tmp_path / "x")  # neither the repo nor the files' folder
    env = config.load_env(tmp_path / loaded)
    assert set(env.sources.values()) == {str((tmp_path / p).resolve()) for p in chain}


def test_a_relative_path_in_an_env_file_is_taken_from_that_files_folder(tmp_path: Path) -> None:
    (tmp_path / "team").mkdir()
    base = write(
        tmp_path / "team",
        "base",
        """
        [emulator.images]
        "taiea:1" = "releases/v1.tar.gz"
        "taiea:abs" = "/srv/v2.tar.gz"
        """,
    )
    child = write(
        tmp_path,
        "child",
        f"""
        extends = "{base}"
        [emulator.images]
        "taiea:2" = "v2.tar.gz"
        """,
    )
    env = config.load_env(child)
    found = {k: env.file_path(f"emulator.images.{k}", v) for k, v in env.emulator.images.items()}
    assert found == {
        "taiea:1": tmp_path / "team" / "releases" / "v1.tar.gz",
        "taiea:abs": Path("/srv/v2.tar.gz"),
        "taiea:2": tmp_path / "v2.tar.gz",
    }
    assert env.file_path("emulator.images.x", "~/r.tar.gz") == Path.home() / "r.tar.gz"


# ---------------------------------------------------------------------------------------------
# errors name the file that set the key


def test_unknown_key_in_a_child_names_that_file_and_the_dotted_key(tmp_path: Path) -> None:
    write(tmp_path, "grand", GRAND)
    write(tmp_path, "middle", MIDDLE)
    child = write(tmp_path, "child", CHILD + '\n[start.env]\nX = "1"\n[monitor]\nintervall_s = 1\n')
    message = load_error(child)
    assert message == f"{child}: key monitor.intervall_s: unknown key"


def test_unknown_key_in_a_parent_names_the_parent(tmp_path: Path) -> None:
    write(tmp_path, "grand", GRAND + "\n[release]\nmax_filez = 3\n")
    write(tmp_path, "middle", MIDDLE)
    child = write(tmp_path, "child", CHILD)
    message = load_error(child)
    assert message == f"{tmp_path / 'grand.toml'}: key release.max_filez: unknown key"


def test_unknown_key_inside_a_smoke_test(tmp_path: Path) -> None:
    write(tmp_path, "grand", GRAND)
    child = write(
        tmp_path, "child", 'extends = "grand"\n[[smoke]]\nname = "a"\npath = "/a"\nexpect = 200\n'
    )
    message = load_error(child)
    assert message.startswith(f"{child}: key smoke.0.expect: ") and "unknown key" in message


@pytest.mark.parametrize(
    "snippet,key",
    [
        ('[start]\nport = "eighty"\n', "start.port"),
        ("[start]\nport = 70000\n", "start.port"),
        ('[start]\nsecrets = "ERLANG_COOKIE"\n', "start.secrets"),
        ('runtime = "docker"\n', "runtime"),
        ('[load.profiles.week3]\nrate = "fast"\nduration_s = 1\n', "load.profiles.week3.rate"),
        ('[[smoke]]\nname = "a"\npath = "no-slash"\n', "smoke.0.path"),
        ('[gates.week3]\n"errors" = "count == 0"\n', "gates.week3.errors"),
    ],
    ids=["str-for-int", "port-range", "str-for-list", "literal", "nested", "validator", "gate"],
)
def test_wrong_type_names_file_and_key(tmp_path: Path, snippet: str, key: str) -> None:
    write(tmp_path, "grand", GRAND)
    child = write(tmp_path, "child", 'extends = "grand"\n' + snippet)
    message = load_error(child)
    assert message.startswith(f"{child}: key {key}: "), message


def test_bad_threshold_names_file_gate_and_key(tmp_path: Path) -> None:
    write(tmp_path, "grand", GRAND)
    child = write(tmp_path, "child", 'extends = "grand"\n[gates.week3]\n"memory.mb" = ["max <"]\n')
    message = load_error(child)
    assert message.startswith(f"{child}: [gates.week3] 'memory.mb': malformed threshold"), message


def test_bad_threshold_in_a_parent_names_the_parent_not_the_child(tmp_path: Path) -> None:
    """The child only adds a key to the same gate table; the bad expression is the parent's."""
    grand = write(tmp_path, "grand", GRAND.replace('"max < 100"', '"p(101) < 100"'))
    child = write(
        tmp_path, "child", 'extends = "grand"\n[gates.week3]\n"smoke.passed" = ["count == 5"]\n'
    )
    message = load_error(child)
    assert message.startswith(f"{grand}: [gates.week3] 'memory.mb': percentile out of range")


def test_unknown_metric_in_a_gate_fails_at_load(tmp_path: Path) -> None:
    child = write(tmp_path, "child", '[gates.week3]\n"latency" = ["avg < 1"]\n')
    message = load_error(child)
    assert message.startswith(f"{child}: [gates.week3] 'latency': unknown metric"), message


def test_missing_env_names_the_known_envs(tmp_path: Path) -> None:
    message = load_error("nosuch")
    assert "nosuch.toml: no such env file" in message
    assert "local" in message.split("envs:")[1] and "base" in message.split("envs:")[1]
    write(tmp_path, "child", 'extends = "gone"\n')
    message = load_error(tmp_path / "child.toml")
    assert message.startswith(f"{tmp_path / 'child.toml'}: key extends: {tmp_path / 'gone.toml'}: ")
    assert "no such env file, and there is no built-in env 'gone' (envs: " in message
    write(tmp_path, "alone", 'extends = "alone"\n')  # its own name: not itself, and none built in
    message = load_error(tmp_path / "alone.toml")
    assert "key extends: names this file itself, and there is no built-in env 'alone'" in message


@pytest.mark.parametrize(
    "files",
    [
        {"a": 'extends = "a.toml"\n'},
        {"a": 'extends = "b"\n', "b": 'extends = "a"\n'},
        {"a": 'extends = "b"\n', "b": 'extends = "c"\n', "c": 'extends = "a"\n'},
    ],
    ids=["self", "two", "three"],
)
def test_extends_loop_is_detected(tmp_path: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        write(tmp_path, name, text)
    message = load_error(tmp_path / "a.toml")
    assert "extends loops back on itself" in message and "a.toml → " in message


def test_extends_must_be_a_string(tmp_path: Path) -> None:
    child = write(tmp_path, "child", "extends = 3\n")
    assert load_error(child).startswith(f"{child}: key extends:")


def test_invalid_toml_names_the_file(tmp_path: Path) -> None:
    write(tmp_path, "grand", GRAND)
    child = write(tmp_path, "child", 'extends = "grand"\n[start\nport = 1\n')
    message = load_error(child)
    assert message.startswith(f"{child}: not valid TOML")
    broken_parent = write(tmp_path, "broken", "x = = 1\n")
    write(tmp_path, "kid", 'extends = "broken"\n')
    assert load_error(tmp_path / "kid.toml").startswith(f"{broken_parent}: not valid TOML")


def test_not_utf8_names_the_file(tmp_path: Path) -> None:
    child = tmp_path / "latin1.toml"
    child.write_bytes('description = "café"\n'.encode("latin-1"))
    assert load_error(child) == f"{child}: not UTF-8 text"


def test_a_directory_is_not_an_env(tmp_path: Path) -> None:
    (tmp_path / "dir.toml").mkdir()
    assert "is a directory" in load_error(tmp_path / "dir.toml")
