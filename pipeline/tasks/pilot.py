"""`invoke pilot.*`: customer pilot scenarios (pilots/*.toml)."""

from invoke import Collection, task

from pipeline.tasks._cli import exit_codes, human_console, number, positional, required


@task(
    help={
        "tenant": "the customer's tenant id",
        "operations": "how many operations to generate",
        "seed": "random seed: the same seed gives the same scenario",
        "name": "the customer's name (default: the tenant id)",
        "price": "price per billable operation (default 0.25)",
        "currency": "ISO 4217 currency (default USD)",
        "out": "write here (default pilots/<tenant>-<operations>-<seed>.toml); - for stdout",
    },
    aliases=("gen",),
    positional=[],
)
def generate(
    c, tenant, operations=None, seed=None, name=None, price="0.25", currency="USD", out=None
):
    """Write a larger pilot scenario whose expectations follow the reference state machine."""
    with exit_codes():
        tenant = required("--tenant", tenant, "pilot.generate")
        from pathlib import Path

        from pipeline import pilots

        operations = number("--operations", operations, 200, integer=True, at_least=1)
        seed = number("--seed", seed, 1, integer=True)
        text = pilots.generate(tenant, operations, seed, name=name, price=price, currency=currency)
        if out == "-":
            print(text, end="")
            return
        path = Path(out or f"pilots/{tenant}-{operations}-{seed}.toml")
        try:
            path.write_text(text)
        except OSError as exc:
            from pipeline.errors import PipelineError

            raise PipelineError(
                f"{path}: cannot write the scenario: {exc.strerror or exc}"
            ) from None
        pilots.load_scenario(path)  # what we write must load
        print(path)


@task(help={"scenario": "the scenario file to check"})
def validate(c, scenario):
    """Check a pilot scenario file: exit 0 valid, 2 with the file, step and field when not."""
    with exit_codes():
        scenario = positional(scenario, "pilot.validate")
        from pipeline import pilots

        loaded = pilots.load_scenario(scenario)
        human_console(False).print(
            f"{loaded.path}: {len(loaded.operations)} operations for {loaded.customer} "
            f"({loaded.tenant_id}), {loaded.price} {loaded.currency} per billable operation"
        )


ns = Collection("pilot")
ns.add_task(generate)
ns.add_task(validate)
