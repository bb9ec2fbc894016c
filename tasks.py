from pipeline.tasks import namespace as ns  # noqa: F401
