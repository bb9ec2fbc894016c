"""Env files as TOML: find, read and merge along `extends`, noting which file set each key.

The schema lives in config.py (pydantic); this layer has no heavy imports, so `gate.check`
reads an env's gates without loading the rest: judging a gate needs only its own table, which
gates.parse_gate validates fully (naming file, gate and key).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.errors import PipelineError
from pipeline.tomlfile import read_toml

ENVS_DIR = Path(__file__).resolve().parent.parent / "envs"
DEFAULT_ENV = "local"


def resolve(name_or_path: str | Path) -> Path:
    """`local` → envs/local.toml; a path (with / or .toml) is taken as it is."""
    text = str(name_or_path)
    if "/" in text or text.endswith(".toml"):
        return Path(text)
    return ENVS_DIR / f"{text}.toml"


def parent_of(path: Path, extends: str) -> Path:
    """The file that `extends` in the env file `path` names. A name (no '/', no .toml suffix) is
    the env file of that name beside `path` (but never `path` itself), else the built-in one in
    envs/; anything else is a path, relative to `path`'s folder."""
    if "/" in extends or extends.endswith(".toml"):
        return path.parent / Path(extends).expanduser()  # an absolute path stays as it is
    beside = path.parent / f"{extends}.toml"
    itself = beside.exists() and beside.resolve() == path.resolve()
    if beside.exists() and not itself:
        return beside
    built_in = ENVS_DIR / f"{extends}.toml"
    if built_in.exists():
        return built_in
    known = ", ".join(sorted(p.stem for p in ENVS_DIR.glob("*.toml")))
    where = "names this file itself" if itself else f"{beside}: no such env file"
    raise PipelineError(
        f"{path}: key extends: {where}, and there is no built-in env {extends!r} (envs: {known})"
    )


def _read(path: Path) -> dict[str, Any]:
    if not path.exists():
        known = ", ".join(sorted(p.stem for p in ENVS_DIR.glob("*.toml")))
        raise PipelineError(f"{path}: no such env file (envs: {known})")
    return read_toml(path, "env file")[1]


def _merge(
    base: dict[str, Any], top: dict[str, Any], sources: dict[str, str], path: Path, prefix: str = ""
) -> None:
    """Deep-merge `top` into `base` (tables merge, everything else replaces), noting who set what."""
    for key, value in top.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and isinstance(base.get(key), dict) and key not in ("body",):
            _merge(base[key], value, sources, path, f"{dotted}.")
        else:
            base[key] = value
        sources[dotted] = str(path)
        if isinstance(value, dict):
            for inner in _dotted_keys(value, f"{dotted}."):
                sources[inner] = str(path)


def _dotted_keys(table: dict[str, Any], prefix: str) -> list[str]:
    keys = []
    for key, value in table.items():
        keys.append(f"{prefix}{key}")
        if isinstance(value, dict):
            keys.extend(_dotted_keys(value, f"{prefix}{key}."))
    return keys


def load_raw(path: Path, seen: tuple[Path, ...]) -> tuple[dict[str, Any], dict[str, str]]:
    path = path.resolve()
    if path in seen:
        chain = " → ".join(p.name for p in (*seen, path))
        raise PipelineError(f"{path}: extends loops back on itself ({chain})")
    data = _read(path)
    parent = data.get("extends")
    merged: dict[str, Any] = {}
    sources: dict[str, str] = {}
    if parent is not None:
        if not isinstance(parent, str):
            raise PipelineError(
                f"{path}: key extends: expected an env name or path, got {parent!r}"
            )
        merged, sources = load_raw(parent_of(path, parent), (*seen, path))
    _merge(merged, data, sources, path)
    merged.pop("extends", None)
    if parent is not None:
        merged["extends"] = parent
    return merged, sources


def gate_spec_of(gates_table: Any, sources: dict[str, str], path: Path, gate: str) -> Any:
    """The parsed [gates.NAME] table (a gates.GateSpec); a bad key names the file that set it."""
    from pipeline import gates

    name = gates.canonical_gate_name(gate)
    if not isinstance(gates_table, dict) or not isinstance(gates_table.get(name), dict):
        known = ", ".join(sorted(gates_table)) if isinstance(gates_table, dict) else ""
        raise PipelineError(f"{path}: no [gates.{name}] table (known: {known or 'none'})")
    source = sources.get(f"gates.{name}", str(path))
    for key, expressions in gates_table[name].items():  # name the file that set a bad key
        owner = sources.get(f"gates.{name}.{key}", source)
        gates.parse_gate(name, {key: expressions}, owner)
    return gates.parse_gate(name, gates_table[name], source)


def gate_spec(env: str | Path, gate: str) -> Any:
    """The [gates.NAME] of an env file, read without validating the env's other sections."""
    path = resolve(env)
    raw, sources = load_raw(path, ())
    return gate_spec_of(raw.get("gates", {}), sources, path, gate)
