"""`adapters push` and `adapters pull`: the registry on a Hugging Face Hub."""

from __future__ import annotations

import click

from .options import open_registry, print_json


@click.command(name="push")
@click.argument("ref", metavar="NAME[@VER]")
@click.option("--all-versions", is_flag=True, help="Push every version of NAME that the Hub does not have, in order.")
@click.option("--repo", "repo_id", default=None, metavar="ORG/REPO",
              help="Hub repo (default: YOUR-USER/NAME, from the token).")
@click.option("--private", is_flag=True, help="Create the repo private.")
@click.option("--endpoint", default=None, help="Hub URL (default: $HF_ENDPOINT or huggingface.co).")
@click.option("--json", "as_json", is_flag=True, help="Print what was pushed as JSON.")
def push_command(ref: str, all_versions: bool, repo_id: str | None, private: bool, endpoint: str | None,
                 as_json: bool) -> None:
    """Push a version to a Hub repo: one commit tagged vN in PEFT's layout; aliases become branches.

    A version already on the Hub sends nothing; an interrupted push resumes where it stopped.
    """
    from loradex.registry.hub.client import push

    say = (lambda line: None) if as_json else (lambda line: click.echo(line, err=True))
    with open_registry() as registry:
        result = push(registry, ref, repo_id=repo_id, all_versions=all_versions, private=private, endpoint=endpoint,
                      say=say)
    if as_json:
        print_json(result.to_dict())
    else:
        click.echo(f"{result.endpoint.rstrip('/')}/{result.repo_id}")


@click.command(name="pull")
@click.argument("ref", metavar="ORG/REPO[@vN|@ALIAS|@COMMIT]")
@click.option("--name", default=None, help="Local adapter name (default: the repo's name).")
@click.option("--task", default=None, help="Task of a plain PEFT repo without loradex.json.")
@click.option("--endpoint", default=None, help="Hub URL (default: $HF_ENDPOINT or huggingface.co).")
@click.option("--json", "as_json", is_flag=True, help="Print the registered version as JSON.")
def pull_command(ref: str, name: str | None, task: str | None, endpoint: str | None, as_json: bool) -> None:
    """Download a version from a Hub repo, check every file, and register it locally.

    Pulling a commit that was pulled before registers nothing new.
    """
    from loradex.registry.hub.client import pull

    say = (lambda line: None) if as_json else (lambda line: click.echo(line, err=True))
    with open_registry() as registry:
        record = pull(registry, ref, name=name, task=task, endpoint=endpoint, say=say)
    if as_json:
        print_json(record.to_dict())
    else:
        click.echo(record.ref)


def register(cli: click.Group) -> None:
    """Add ``push`` and ``pull`` to the root group."""
    for command in (push_command, pull_command):
        cli.add_command(command)
