"""A local Cloud Run: the Admin API v2 emulator that really runs revisions (ARCHITECTURE.md).

Nothing outside this package and its tests imports it: the rollout talks to it over HTTP with
google.cloud.run_v2 (REST, AnonymousCredentials, api_endpoint "http://127.0.0.1:8089"), exactly
as it talks to Google. Start it with `invoke emulator.start [--port] [--env] [--background]` or
`python -m pipeline.emulator start ...`; stop it with `invoke emulator.stop`.

- control.py   services, revisions, traffic, operations: validation, naming, etag/generation
               (pure state, no I/O)
- wire.py      the REST JSON as the client speaks it: enums, durations, masks, Google errors
- images.py    container image → release tarball (file:///abs/path.tar.gz or [emulator] images)
- router.py    the data plane's HTTP/1.1 reverse proxy: service and tag URLs → revision pools
- dataplane.py listeners, pools, instances and the autoscaler, applying the control plane's plan
- host.py      the child process that runs instances through the runtime interface
- store.py     the state file, written atomically (<runs>/emulator/state.json)
- server.py    the aiohttp Admin API and the /emulator/v1 extensions; the Emulator class
- daemon.py    background start, stop and status (<runs>/emulator/emulator.json, .lock, .log)
"""
