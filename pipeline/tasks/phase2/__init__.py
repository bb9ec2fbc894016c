"""`invoke phase2.*`: the Phase 2 weeks, each ending in its gate. One module per week, each
exporting `TASK`; this package collects them into the `phase2` collection."""

import importlib
import pkgutil

from invoke import Collection

ns = Collection("phase2")
for _info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    _module = importlib.import_module(f"{__name__}.{_info.name}")
    if hasattr(_module, "TASK"):
        ns.add_task(_module.TASK)
