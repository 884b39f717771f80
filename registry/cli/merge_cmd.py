"""`adapters merge` and `adapters compress`: new versions made from stored ones, each measured."""

from __future__ import annotations

import click

from .options import open_registry, print_json


def _floats(value: str | None, option: str) -> list[float] | None:
    from loradex.core.errors import ConfigError

    if value is None:
        return None
    try:
        return [float(v) for v in value.split(",")]
    except ValueError:
        raise ConfigError(f"{option} {value!r} is not a comma-separated list of numbers") from None


class _MergeCommand(click.Command):
    """``adapters merge`` whose help lists the registered merge methods, read when help is shown."""

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        from loradex.registry.derive.merge import METHODS

        with formatter.section("Methods"):
            formatter.write_dl([(m.name, m.help) for m in METHODS.values()])
        super().format_epilog(ctx, formatter)


@click.command(name="merge", cls=_MergeCommand)
@click.argument("refs", nargs=-1, metavar="A[@V] B[@V] ...")
@click.option("--name", required=True, help="Name of the merged adapter (stored as NAME@vN).")
@click.option("--method", default="cat", show_default=True, help="How to merge: one of the methods listed below.")
@click.option("--weights", default=None, help="One weight per adapter, comma-separated (default: 1/K each for one "
                                               "task, 1 each for different tasks).")
@click.option("--density", type=float, default=None, help="Share of coordinates kept by ties, dare_*, "
                                                           "magnitude_prune and knots, in (0, 1].")
@click.option("--rank", type=int, default=None, help="Rank of an svd merge (default: the largest input rank).")
@click.option("--base", default=None, metavar="NAME[@VER]",
              help="The adapter the inputs were fine-tuned from (train --init): merge their task vectors "
                   "ΔW - ΔW_base and add the base back (task arithmetic).")
@click.option("--eval-data", "eval_data", multiple=True, metavar="NAME=PATH",
              help="Validation data of an input whose recorded training data is gone.")
@click.option("--search", is_flag=True, help="Try every method on a small grid of weights and densities; keep the "
                                             "best by mean retained %.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def merge_command(refs: tuple[str, ...], name: str, method: str, weights: str | None, density: float | None,
                  rank: int | None, base: str | None, eval_data: tuple[str, ...], search: bool, as_json: bool) -> None:
    """Merge adapters WITH their heads into NAME, measuring how much of each input's metric survives.

    Adapters of one task become one adapter (heads averaged); adapters of different tasks become
    ONE multi-task adapter: a single merged LoRA plus every input's head. Each input's primary
    metric on its own validation data, before and after, is stored with the new version.
    """
    from loradex.registry.derive.sessions import merge_versions
    from loradex.registry.derive.measure import table

    say = (lambda line: click.echo(line, err=True)) if search else (lambda line: None)
    with open_registry() as registry:
        done = merge_versions(registry, list(refs), name=name, method=method, weights=_floats(weights, "--weights"),
                              density=density, rank=rank, eval_data=eval_data, search=search, base=base, say=say)
    record = done.record
    if as_json:
        print_json({"adapter": record.ref, "kind": record.args.get("kind_detail"), **done.details,
                    "tasks": list(record.spec.tasks), "metrics": record.metrics,
                    "measured": [m.to_dict() for m in done.measurements],
                    "search": [c.row() for c in done.candidates]})
        return
    details = done.details
    exact = "exact" if details["exact"] else f"approximate: update error {details['update_error']:.2%}"
    click.echo(f"merged {', '.join(record.parents)} -> {record.ref} ({details['method']}, rank {details['rank']}, "
               f"{exact}; tasks {', '.join(record.spec.tasks)})", err=True)
    for line in table(done.measurements):
        click.echo(line)
    if "retained_mean" in record.metrics:
        click.echo(f"mean retained {record.metrics['retained_mean']:.1f}%, worst {record.metrics['retained_min']:.1f}%")
    click.echo(record.ref)


@click.command(name="compress")
@click.argument("ref", metavar="NAME[@VER]")
@click.option("--rank", type=int, default=None, help="Keep the best rank-K approximation of every update.")
@click.option("--energy", type=float, default=None,
              help="Per layer, keep the fewest singular values holding this share of the update's energy.")
@click.option("--dtype", type=click.Choice(["bf16", "fp16", "fp32"]), default=None, help="Store the factors as this.")
@click.option("--name", default=None, help="Store as a version of this name (default: the same adapter).")
@click.option("--eval-data", "eval_data", multiple=True, metavar="NAME=PATH",
              help="Validation data, if the adapter's recorded training data is gone.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def compress_command(ref: str, rank: int | None, energy: float | None, dtype: str | None, name: str | None,
                     eval_data: tuple[str, ...], as_json: bool) -> None:
    """Compress an adapter by truncated SVD and/or half precision, as a new version.

    Prints per layer the relative error and cosine similarity to the original update, the
    size before and after, and the task metric before and after.
    """
    from loradex.registry.derive.sessions import compress_version
    from loradex.registry.derive.measure import table

    with open_registry() as registry:
        done = compress_version(registry, ref, name=name, rank=rank, energy=energy, dtype=dtype, eval_data=eval_data)
    record = done.record
    if as_json:
        print_json({"adapter": record.ref, "parent": record.parents[0], **{k: v for k, v in record.args.items()
                                                                           if k != "measured"},
                    "measured": [m.to_dict() for m in done.measurements], "metrics": record.metrics})
        return
    args = record.args
    for layer in args["layers"]:
        before, after = layer["rank"]
        click.echo(f"{layer['module']:<48} rank {before:>3} -> {after:<3} rel. error {layer['relative_error']:.4f}  "
                   f"cosine {layer['cosine']:.5f}")
    click.echo(f"size {args['size_before']:,} -> {args['size_after']:,} bytes "
               f"({args['size_after'] / max(args['size_before'], 1):.1%})")
    for line in table(done.measurements):
        click.echo(line)
    click.echo(record.ref)


def register(cli: click.Group) -> None:
    """Add ``merge`` and ``compress`` to the root group."""
    for command in (merge_command, compress_command):
        cli.add_command(command)
