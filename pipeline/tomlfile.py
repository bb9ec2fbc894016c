"""Reading a TOML file the user named (an env file, a pilot scenario): its bytes and tables, or
one PipelineError line naming the file and what is wrong with it."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from pipeline.errors import PipelineError


def read_toml(path: Path, noun: str) -> tuple[bytes, dict[str, Any]]:
    """The file's bytes (to hash) and its tables; `noun` names the kind of file in errors."""
    try:
        raw = path.read_bytes()
        return raw, tomllib.loads(raw.decode("utf-8"))
    except FileNotFoundError:
        raise PipelineError(f"{path}: no such {noun}") from None
    except IsADirectoryError:
        raise PipelineError(f"{path}: is a directory, not a {noun}") from None
    except PermissionError:
        raise PipelineError(f"{path}: permission denied") from None
    except UnicodeDecodeError:
        raise PipelineError(f"{path}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise PipelineError(f"{path}: not valid TOML: {exc}") from None
