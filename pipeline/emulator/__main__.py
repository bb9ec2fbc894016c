"""`python -m pipeline.emulator {serve,start,stop,status}`: what `invoke emulator.*` runs.

serve   run in the foreground until Ctrl-C / SIGTERM (then every instance is stopped)
start   the same, or with --background detached (stop it with `stop`)
stop    stop the emulator that uses the state dir, and every instance it started
status  whether one runs, where, and what it serves (--json for scripts)

Exit status: 0 done, 2 bad input or configuration (one line on stderr), 1 a bug.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import NoReturn

from pipeline.errors import PipelineError


def _state_dir(value: str | None) -> Path:
    if value:
        return Path(value).resolve()
    from pipeline.receipts import runs_dir

    return (runs_dir() / "emulator").resolve()


def _port(env: str, port: int | None) -> int:
    if port is not None:
        return port
    from pipeline.config import load_env

    return int(load_env(env).emulator.port)


def _serve(args: argparse.Namespace) -> int:
    from pipeline.emulator.server import Emulator

    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    emulator = Emulator(
        args.env, port=args.port, host=args.host, state_dir=_state_dir(args.state_dir)
    )

    def announce(url: str) -> None:
        print(
            f"emulator: Cloud Run Admin API v2 on {url} (state {emulator.state_dir}); "
            "Ctrl-C stops it and every instance",
            flush=True,
        )

    emulator.serve_forever(announce)
    print("emulator: stopped", flush=True)
    return 0


def _start(args: argparse.Namespace) -> int:
    if not args.background:
        return _serve(args)
    from pipeline.emulator import daemon

    reg = daemon.start_background(
        args.env, _port(args.env, args.port), _state_dir(args.state_dir), args.host
    )
    print(
        f"emulator: running in the background at {reg['url']} (pid {reg['pid']}); "
        f"log {reg['log']}; stop it with: invoke emulator.stop",
        flush=True,
    )
    return 0


def _stop(args: argparse.Namespace) -> int:
    from pipeline.emulator import daemon

    out = daemon.stop(_state_dir(args.state_dir), timeout=args.timeout)
    if args.json:
        print(json.dumps(out))
    elif out["was_running"]:
        how = "killed (it did not stop in time)" if out.get("forced") else "stopped"
        print(f"emulator: {how} (pid {out['pid']}, {out['url']}) in {out['seconds']:.2f} s")
    else:
        print(f"emulator: none running (state {out['state_dir']})")
    if out["killed"]:
        print(f"emulator: killed {len(out['killed'])} instance(s) left behind: {out['killed']}")
    return 0


def _status(args: argparse.Namespace) -> int:
    from pipeline.emulator import daemon

    out = daemon.status(_state_dir(args.state_dir))
    if args.json:
        print(json.dumps(out))
    elif not out["running"]:
        print(f"emulator: not running (state {out['state_dir']})")
    elif not out.get("answering"):
        print(f"emulator: pid {out['pid']} registered at {out['url']} but not answering")
    else:
        services = out.get("services", [])
        print(
            f"emulator: running at {out['url']} (pid {out['pid']}), {len(services)} service(s), "
            f"{out.get('instances', 0)} instance(s), state {out['state_dir']}"
        )
        for name in services:
            print(f"  {name}")
    return 0


class _Parser(argparse.ArgumentParser):
    """Bad arguments are one line and exit 2, like every other mistake here."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {self.prog}: {message} (--help for usage)\n")


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(prog="python -m pipeline.emulator", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name, fn in (("serve", _serve), ("start", _start)):
        p = sub.add_parser(name)
        p.add_argument("--env", default="cloudrun-local", help="env name or path")
        p.add_argument("--port", type=int, default=None, help="admin API port (0: a free one)")
        p.add_argument("--host", default=None, help="address to listen on")
        p.add_argument("--state-dir", default=None, help="default <runs>/emulator")
        if name == "start":
            p.add_argument("--background", action="store_true", help="detach")
        p.set_defaults(fn=fn)
    p = sub.add_parser("stop")
    p.add_argument("--state-dir", default=None)
    p.add_argument("--timeout", type=float, default=60.0, help="seconds before SIGKILL")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=_stop)
    p = sub.add_parser("status")
    p.add_argument("--state-dir", default=None)
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=_status)
    args = parser.parse_args(argv)
    try:
        return int(args.fn(args))
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
