"""The invoke namespace: every module here that exports a `ns` Collection becomes one collection.

Modules stay thin: they turn flags into a call to `pipeline` and render what comes back.
"""

import importlib
import pkgutil

from invoke import Collection

namespace = Collection()
for _info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if _info.name.startswith("_"):
        continue
    _module = importlib.import_module(f"{__name__}.{_info.name}")
    if isinstance(getattr(_module, "ns", None), Collection):
        namespace.add_collection(_module.ns)
