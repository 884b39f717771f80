"""The plugin manager: built-ins through the public hooks, entry points, broken plugins."""

from __future__ import annotations

import inspect
import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from loradex.core import hookspecs, plugins

ROOT = Path(__file__).resolve().parents[1]


def install_fake_plugin(site: Path, dist: str, module: str, source: str) -> None:
    """A real installed distribution (dist-info with an entry point) on ``site``."""
    site.mkdir(parents=True, exist_ok=True)
    (site / f"{module}.py").write_text(source)
    info = site / f"{dist.replace('-', '_')}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[loradex]\n{module} = {module}\n")


@pytest.fixture
def fresh_plugins(monkeypatch):
    """Reload plugins from scratch for this test, and again afterwards."""
    plugins.reset()
    yield monkeypatch
    plugins.reset()


def test_builtins_register_through_the_hooks(fresh_plugins):
    tasks = plugins.get_tasks()
    assert tasks["classification"].plugin == "loradex.plugins.classification"
    backbones = plugins.get_backbones()
    assert {"tiny-vit", "vit-base", "hf"} <= set(backbones)
    assert backbones["tiny-vit"].plugin == "loradex.plugins.backbones"
    assert set(plugins.builtin_plugins()) == {"loradex.plugins.backbones", "loradex.plugins.classification",
                                              "loradex.plugins.detection", "loradex.plugins.pose",
                                              "loradex.plugins.grounding", "loradex.plugins.segmentation"}
    # ^ from pyproject.toml's entry points
    for name in plugins.builtin_plugins():
        assert plugins.pm.get_plugin(name) is not None


def test_example_plugin_is_an_installed_entry_point(fresh_plugins):
    infos = {info.name: info for info in plugins.plugin_infos()}
    assert infos["brightness"].package == "loradex-example-task"
    assert "register_tasks" in infos["brightness"].hooks
    assert plugins.get_tasks()["brightness"].plugin == "brightness"


def test_load_plugins_env_limits_third_party(fresh_plugins):
    fresh_plugins.setenv("LORADEX_LOAD_PLUGINS", "")
    assert "brightness" not in plugins.get_tasks()
    assert "classification" in plugins.get_tasks()
    plugins.reset()
    fresh_plugins.setenv("LORADEX_LOAD_PLUGINS", "loradex-example-task")
    assert "brightness" in plugins.get_tasks()


def test_plugin_that_raises_on_import_is_reported_and_isolated(fresh_plugins, tmp_path, capsys):
    install_fake_plugin(tmp_path / "site", "loradex-broken", "broken_plugin", "raise RuntimeError('boom at import')\n")
    fresh_plugins.syspath_prepend(str(tmp_path / "site"))
    tasks = plugins.get_tasks()
    assert "classification" in tasks
    assert "boom at import" in plugins.failures()["broken_plugin"]
    assert ("plugin 'broken_plugin' (from loradex-broken 0.1) is disabled: RuntimeError: boom at import"
            in capsys.readouterr().err)
    infos = {info.name: info for info in plugins.plugin_infos()}
    assert infos["broken_plugin"].error.startswith("RuntimeError")
    assert (infos["broken_plugin"].package, infos["broken_plugin"].version) == ("loradex-broken", "0.1")  # issue 24.3


def test_unknown_hook_is_refused_loudly(fresh_plugins, tmp_path):
    source = "from loradex.core.hookspecs import hookimpl\n\n@hookimpl\ndef register_taskz(register):\n    pass\n"
    install_fake_plugin(tmp_path / "site", "loradex-typo", "typo_plugin", source)
    fresh_plugins.syspath_prepend(str(tmp_path / "site"))
    plugins.load_plugins()
    assert plugins.pm.get_plugin("typo_plugin") is None
    assert "register_taskz" in plugins.failures()["typo_plugin"]


def test_hook_that_raises_is_isolated(fresh_plugins, tmp_path):
    source = ("from loradex.core.hookspecs import hookimpl\n\n@hookimpl\ndef register_tasks(register):\n"
              "    raise ValueError('bad task')\n")
    install_fake_plugin(tmp_path / "site", "loradex-badtask", "badtask_plugin", source)
    fresh_plugins.syspath_prepend(str(tmp_path / "site"))
    assert "classification" in plugins.get_tasks()
    assert "ValueError: bad task" in plugins.failures()["badtask_plugin"]


def test_duplicate_task_name_is_refused(fresh_plugins, tmp_path):
    source = ("from loradex.core.hookspecs import hookimpl\nfrom loradex.plugins.classification.task import ClassificationTask\n\n"
              "@hookimpl\ndef register_tasks(register):\n    register(ClassificationTask())\n")
    install_fake_plugin(tmp_path / "site", "loradex-dupe", "dupe_plugin", source)
    fresh_plugins.syspath_prepend(str(tmp_path / "site"))
    assert plugins.get_tasks()["classification"].plugin == "loradex.plugins.classification"
    assert "already registered" in plugins.failures()["dupe_plugin"]


def test_broken_plugin_does_not_break_the_cli(fresh_plugins, tmp_path):
    install_fake_plugin(tmp_path / "site", "loradex-broken", "broken_plugin", "import no_such_module_xyz\n")
    fresh_plugins.syspath_prepend(str(tmp_path / "site"))
    from loradex.registry.cli import cli

    result = CliRunner().invoke(cli, ["plugins", "--json"])
    assert result.exit_code == 0, result.output
    listed = {p["name"]: p for p in json.loads(result.stdout)}
    assert "No module named 'no_such_module_xyz'" in listed["broken_plugin"]["error"]
    result = CliRunner().invoke(cli, ["list", "--json"])
    assert result.exit_code == 0, result.output


def test_every_hook_is_documented_and_tested():
    """datasette's rule: each hookspec has a docstring and is documented with its signature."""
    guide = (ROOT / "docs" / "writing-plugins.md").read_text()
    hooks = [name for name, obj in inspect.getmembers(hookspecs, inspect.isfunction)
             if hasattr(obj, "loradex_spec")]
    assert set(hooks) == {"register_tasks", "register_backbones", "register_commands"}
    for name in hooks:
        func = getattr(hookspecs, name)
        assert func.__doc__, name
        signature = f"{name}{inspect.signature(func)}"
        assert re.search(re.escape(signature), guide), f"{signature} is not in docs/writing-plugins.md"


def test_register_commands_hook_adds_a_command(tmp_path):
    from PIL import Image

    from loradex.registry.cli import cli

    Image.new("L", (4, 4), 51).save(tmp_path / "grey.png")
    result = CliRunner().invoke(cli, ["brightness-of", str(tmp_path / "grey.png")])  # the example plugin's command
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().endswith("0.2000")
    assert "brightness-of" in cli.list_commands(None)


def test_a_failed_plugin_keeps_nothing_it_registered(fresh_plugins, tmp_path):
    """Its other task and its backbone go too, not only the registration that clashed."""
    source = ("from loradex.core.hookspecs import hookimpl\n"
              "from loradex.plugins.classification.task import ClassificationTask\n"
              "from loradex.plugins.backbones.presets import PRESETS\n"
              "import dataclasses\n\n"
              "class Counting(ClassificationTask):\n    name = 'counting'\n\n"
              "@hookimpl\ndef register_backbones(register):\n"
              "    register(dataclasses.replace(PRESETS[0], name='half-vit'))\n\n"
              "@hookimpl\ndef register_tasks(register):\n    register(Counting())\n    register(ClassificationTask())\n")
    install_fake_plugin(tmp_path / "site", "loradex-half", "half_plugin", source)
    fresh_plugins.syspath_prepend(str(tmp_path / "site"))
    assert "half-vit" in plugins.get_backbones()  # collected before the task hook failed ...
    tasks = plugins.get_tasks()
    assert "already registered" in plugins.failures()["half_plugin"]
    assert "counting" not in tasks  # ... and taken back with everything else of the plugin
    assert "half-vit" not in plugins.get_backbones()
    assert plugins.pm.get_plugin("half_plugin") is None


def test_a_plugin_command_cannot_shadow_a_built_in(fresh_plugins, tmp_path, capsys):
    source = ("import click\nfrom loradex.core.hookspecs import hookimpl\n\n@hookimpl\ndef register_commands(cli):\n"
              "    @cli.command(name='train')\n    def train():\n        'Not the real train.'\n")
    install_fake_plugin(tmp_path / "site", "loradex-shadow", "shadow_plugin", source)
    fresh_plugins.syspath_prepend(str(tmp_path / "site"))
    from loradex.registry.cli import cli

    cli.plugins_loaded = False
    before = cli.commands["train"]
    try:
        cli.load_plugin_commands()
        assert cli.commands["train"] is before
        assert "plugin 'shadow_plugin' tried to add the command 'train', which is already built in" in \
            capsys.readouterr().err
    finally:
        cli.plugins_loaded = False
        cli.commands["train"] = before


def test_unknown_names_in_load_plugins_are_warned_about(fresh_plugins, capsys):
    fresh_plugins.setenv("LORADEX_LOAD_PLUGINS", "loradex-example-tsk")
    plugins.load_plugins()
    err = capsys.readouterr().err
    assert "LORADEX_LOAD_PLUGINS names 'loradex-example-tsk', which is not an installed plugin." in err
    assert "Did you mean 'loradex-example-task'?" in err


def test_debug_switch_shows_a_failed_plugins_traceback(fresh_plugins, tmp_path, capsys):
    install_fake_plugin(tmp_path / "site", "loradex-broken", "broken_plugin", "def f():\n    1 / 0\nf()\n")
    fresh_plugins.syspath_prepend(str(tmp_path / "site"))
    fresh_plugins.setenv("LORADEX_DEBUG", "1")
    plugins.load_plugins()
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "ZeroDivisionError" in err and "broken_plugin.py" in err


def test_provenance_of_an_adapter_whose_plugin_is_gone(fresh_plugins, tmp_path, capsys):
    """Issue 24.3: an adapter records the package that made each task; with that plugin gone, list marks
    it, predict names the package to install, a merged adapter serves its other heads, uninstall warns."""
    from PIL import Image

    from loradex.registry.cli import cli
    from loradex.registry.cli.plugins_cmd import _warn_stored_versions

    home = tmp_path / "home"
    fresh_plugins.setenv("LORADEX_HOME", str(home))

    def run(*args):
        return CliRunner().invoke(cli, [*map(str, args)])

    for task in ("brightness", "classification"):
        trained = run("train", task, "--data", "synthetic:train=8,val=5,test=0", "--epochs", "1", "--no-progress",
                      "--project", tmp_path / "runs", "--name", task)
        assert trained.exit_code == 0, trained.output
    shown = json.loads(run("show", "brightness", "--json").stdout)
    assert shown["spec"]["plugins"]["brightness"].startswith("loradex-example-task ")
    assert shown["spec"]["plugins"] == {"brightness": shown["spec"]["plugins"]["brightness"]}
    assert json.loads(run("show", "classification", "--json").stdout)["spec"]["plugins"]["classification"].startswith(
        "loradex ")
    assert run("merge", "brightness", "classification", "--name", "both").exit_code == 0
    _warn_stored_versions(("loradex-example-task",))
    assert "used by 2 stored versions (both@v1, brightness@v1)" in capsys.readouterr().err

    plugins.reset()  # as if the example plugin were uninstalled: third-party plugins load no more
    fresh_plugins.setenv("LORADEX_LOAD_PLUGINS", "")
    listed = {row["name"]: row for row in json.loads(run("list", "--json").stdout)}
    assert listed["brightness"]["tasks_not_installed"] == ["brightness"]
    assert listed["both"]["tasks_not_installed"] == ["brightness"] and listed["classification"]["tasks_not_installed"] == []
    assert "not installed: brightness" in run("list").output
    assert run("show", "brightness").exit_code == 0
    image = tmp_path / "photo.png"
    Image.new("RGB", (40, 30), (10, 200, 30)).save(image)
    refused = run("predict", "brightness", image)
    assert refused.exit_code != 0 and "Traceback" not in refused.output
    assert re.search(r"unknown task 'brightness'\. It comes from the package loradex-example-task \S+: install it "
                     r"\(adapters install loradex-example-task\)", refused.stderr), refused.stderr
    served = run("predict", "both", image, "--json")
    assert served.exit_code == 0, served.output
    assert list(json.loads(served.stdout)[0]["predictions"]) == ["both@v1#classification"]
    assert "head 'brightness' is left out" in served.stderr
