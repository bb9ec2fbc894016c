"""Where a release runs. `runtime_for(env)` picks the implementation the env file names."""

from __future__ import annotations

from typing import Any

from pipeline.errors import PipelineError


def runtime_for(env: Any) -> Any:
    kind = env.runtime
    if kind == "process":
        from pipeline.runtime.process import ProcessRuntime

        return ProcessRuntime()
    if kind == "gvisor":
        from pipeline.runtime.gvisor import GvisorRuntime, check_host

        runsc = check_host(env.sandbox.runsc, str(env.path))  # runsc missing: the install command
        return GvisorRuntime(env.sandbox, runsc)
    raise PipelineError(f"{env.path}: runtime {kind!r} is not available here yet")
