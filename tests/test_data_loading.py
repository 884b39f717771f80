"""The data path: fast transforms equal the processor's, workers and caches leave training unchanged,
and errors inside workers stay one clear line."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

from loradex.core.data import ImageDataset
from loradex.core.data.loading import ImageCache, checked_batches, default_workers, make_loader
from loradex.core.data.transforms import FastTransform, open_for
from loradex.core.errors import ConfigError, DataError


def photo(size=(97, 61), seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def test_fast_transform_equals_the_processor(tiny_backbone):
    fast = tiny_backbone.transform_at(None)
    assert isinstance(fast, FastTransform)
    for size, seed in (((97, 61), 0), ((64, 64), 1), ((300, 20), 2)):
        image = photo(size, seed)
        expected = tiny_backbone._processed(image)
        torch.testing.assert_close(fast(image), expected, rtol=0, atol=1e-5)
    resized = tiny_backbone.transform_at(96)(photo())
    torch.testing.assert_close(resized, tiny_backbone._resized(photo(), size=96), rtol=0, atol=1e-5)


def test_large_jpegs_decode_at_a_reduced_scale_within_tolerance(tiny_backbone, tmp_path):
    from skimage import data

    path = tmp_path / "astronaut.jpg"
    Image.fromarray(data.astronaut()).resize((1536, 1536)).save(path, quality=92)
    fast = tiny_backbone.transform_at(None)
    drafted = fast(open_for(path, fast))
    from loradex.core.data import open_image

    exact = tiny_backbone._processed(open_image(path))
    assert drafted.shape == exact.shape == (3, 64, 64)
    assert float((drafted - exact).abs().mean()) < 0.05


def write_folder(root, count=24, bad=None):
    paths, labels = [], []
    for index in range(count):
        path = root / f"img_{index}.png"
        photo((40 + index, 30 + index), index).save(path)
        paths.append(path)
        labels.append(index % 3)
    if bad is not None:
        paths[bad].write_bytes(b"not an image at all")
    return paths, labels


def batches_of(dataset, workers, seed=0):
    loader = make_loader(dataset, batch_size=5, collate=None, shuffle=True, seed=seed, workers=workers)
    return [(x.clone(), y.clone()) for x, y in checked_batches(loader)]


def test_workers_give_the_same_batches_in_the_same_order(tiny_backbone, tmp_path):
    paths, labels = write_folder(tmp_path)
    dataset = ImageDataset(paths, labels, tiny_backbone.transform_at(None))
    alone, parallel = batches_of(dataset, 0), batches_of(dataset, 2)
    assert len(alone) == len(parallel) == 5
    for (xa, ya), (xb, yb) in zip(alone, parallel):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_a_bad_image_in_a_worker_is_one_line_naming_the_file(tiny_backbone, tmp_path):
    paths, labels = write_folder(tmp_path, bad=7)
    dataset = ImageDataset(paths, labels, tiny_backbone.transform_at(None))
    with pytest.raises(DataError) as caught:
        batches_of(dataset, 2)
    message = str(caught.value)
    assert message.startswith(f"{paths[7]}: unreadable image") and "\n" not in message
    assert "DataLoader worker" not in message and "Traceback" not in message


class DyingDataset:
    def __len__(self):
        return 8

    def __getitem__(self, index):
        if index == 3:
            os._exit(3)  # a worker killed outright (the OOM killer, a segfault in a decoder)
        return torch.zeros(2), 0


def test_a_dead_worker_is_one_clear_line():
    loader = make_loader(DyingDataset(), batch_size=2, collate=None, workers=1)
    with pytest.raises(DataError, match=r"a data-loading worker died .*rerun with --workers 0"):
        list(checked_batches(loader))


def test_ram_and_disk_caches_give_the_same_tensors(tiny_backbone, tmp_path):
    paths, labels = write_folder(tmp_path)
    transform = tiny_backbone.transform_at(None)
    plain = [ImageDataset(paths, labels, transform)[i][0] for i in range(len(paths))]
    said = []
    ram = ImageCache(paths, transform, kind="ram")
    ram.fill(say=said.append)
    assert ram.nbytes == 24 * 64 * 64 * 3 and "24 images at 64x64 take 0.3 MB of RAM" in said[0]
    disk = ImageCache(paths, transform, kind="disk", folder=tmp_path / "cache")
    disk.fill(say=said.append)
    assert "of disk" in said[-1]
    again = ImageCache(paths, transform, kind="disk", folder=tmp_path / "cache")
    again.fill(say=said.append)
    assert said[-1].startswith("cache: reusing")
    for cache in (ram, disk, again):
        dataset = ImageDataset(paths, labels, transform)
        dataset.cache = cache
        for index, expected in enumerate(plain):
            assert torch.equal(dataset[index][0], expected)
    with pytest.raises(ConfigError, match="cache must be one of ram, disk"):
        ImageCache(paths, transform, kind="gpu")


def test_default_workers_fit_the_machine(tiny_backbone, tmp_path):
    from loradex.core.data import TensorListDataset

    paths, labels = write_folder(tmp_path, count=3)
    files = ImageDataset(paths, labels, tiny_backbone.transform_at(None))
    assert default_workers(TensorListDataset([torch.zeros(1)], [0]), cpus=64) == 0  # in memory already
    assert default_workers(files, cpus=2) == 0  # the model needs both cores
    assert default_workers(files, cpus=16) == 3
    assert default_workers(files, device=torch.device("cuda"), cpus=16) == 8


def test_settings_refuse_bad_workers_and_cache():
    from loradex.core.errors import SpecError
    from loradex.core.spec import RuntimeSettings

    with pytest.raises(SpecError, match="workers must be an integer >= 0"):
        RuntimeSettings(workers=-1)
    with pytest.raises(SpecError, match="cache must be one of ram, disk"):
        RuntimeSettings(cache="ssd")


def test_threads_follow_the_setting(monkeypatch):
    from loradex.core.threads import competing_process, configure_threads

    before = torch.get_num_threads()
    try:
        assert configure_threads(1) == 1 and torch.get_num_threads() == 1
        monkeypatch.setenv("LORADEX_THREADS", "two")
        with pytest.raises(ConfigError, match=r"\$LORADEX_THREADS='two' is not a whole number"):
            configure_threads()
    finally:
        torch.set_num_threads(before)
    # a busy process that is not ours (not a child: data-loading workers are) is named
    import signal
    import subprocess
    import sys
    import time

    busy = "import time\nend = time.time() + 4\nwhile time.time() < end: pass"
    started = subprocess.run(["sh", "-c", f'{sys.executable} -c "{busy}" >/dev/null 2>&1 & echo $!'],
                             capture_output=True, text=True, check=True)
    pid = int(started.stdout.strip())
    try:
        time.sleep(0.5)
        line = competing_process(watch=0.5)
    finally:
        os.kill(pid, signal.SIGKILL)
    assert line is not None and f"pid {pid}" in line and "--threads" in line


def test_backbone_without_a_plain_processor_keeps_the_processor(tmp_path):
    """A processor that center-crops is not replaced (its output would differ)."""
    import transformers

    from loradex.core.data.transforms import fast_transform_for

    processor = transformers.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    assert fast_transform_for(processor, 32) is None


def built_disk_cache(backbone, tmp_path):
    """(paths, transform, folder, a filled disk cache, its data file) for the tiny-vit preset."""
    paths, _ = write_folder(tmp_path)
    transform = backbone.transform_at(None)
    folder = tmp_path / "cache"
    cache = ImageCache(paths, transform, kind="disk", folder=folder)
    cache.fill(say=lambda line: None)
    (data,) = folder.glob("*.u8")
    return paths, transform, folder, cache, data


def test_a_disk_cache_changed_after_it_was_written_is_rebuilt_not_reused(tiny_backbone, tmp_path):
    """Issue 22.1: a cache file zeroed in place (as a racing run's w+ open did) trained on black images."""
    import numpy as np

    paths, transform, folder, first, data = built_disk_cache(tiny_backbone, tmp_path)
    expected = np.array(first.pixels)
    data.write_bytes(b"\0" * data.stat().st_size)  # zeroed in place, marker intact
    said = []
    again = ImageCache(paths, transform, kind="disk", folder=folder)
    again.fill(say=said.append)
    assert "is damaged (its checksum differs" in said[0] and not any("reusing" in s for s in said)
    assert np.array_equal(np.array(again.pixels), expected)
    assert [p.name for p in folder.iterdir() if p.name.startswith(".")] == []  # no private leftovers


def test_a_run_reading_the_cache_keeps_its_pixels_while_another_run_publishes_one(tiny_backbone, tmp_path):
    import numpy as np

    paths, transform, folder, reader, data = built_disk_cache(tiny_backbone, tmp_path)
    before = np.array(reader.pixels)
    inode = data.stat().st_ino
    data.with_suffix(".json").unlink()  # the second run finds no complete cache and builds its own
    writer = ImageCache(paths, transform, kind="disk", folder=folder)
    writer.fill(say=lambda line: None)
    assert data.stat().st_ino != inode  # published by rename: the reader's file was never opened for writing
    assert np.array_equal(np.array(reader.pixels), before)  # its file was replaced by rename, never rewritten
    assert np.array_equal(np.array(writer.pixels), before)


def test_verify_reports_a_damaged_image_cache_and_repair_removes_it(tiny_backbone, tmp_path, isolated_home):
    from click.testing import CliRunner

    from loradex.registry.cli import cli

    paths, _ = write_folder(tmp_path)
    folder = isolated_home / "cache" / "images"
    ImageCache(paths, tiny_backbone.transform_at(None), kind="disk", folder=folder).fill(say=lambda line: None)
    assert CliRunner().invoke(cli, ["verify"]).exit_code == 0
    (data,) = folder.glob("*.u8")
    with open(data, "r+b") as handle:
        handle.seek(100)
        handle.write(b"\xff\xfe")
    found = CliRunner().invoke(cli, ["verify"])
    assert found.exit_code != 0 and "image cache is damaged (its checksum differs" in found.output
    repaired = CliRunner().invoke(cli, ["verify", "--repair"])
    assert repaired.exit_code == 0 and "a damaged image cache" in repaired.output
    assert list(folder.glob("*.u8")) == []


def test_a_seeded_shuffle_gives_the_same_order_every_epoch_whatever_the_workers():
    """Issue 22.2: persistent workers drew the loader's seed once, so epoch 2 on differed from 0 workers."""
    from loradex.core.data import TensorListDataset

    dataset = TensorListDataset([torch.tensor([float(i)]) for i in range(40)], list(range(40)))

    def orders(workers):
        loader = make_loader(dataset, batch_size=8, collate=None, shuffle=True, seed=3, workers=workers)
        return [[int(x) for batch in checked_batches(loader) for x in batch[1]] for _ in range(3)]

    plain, with_workers = orders(0), orders(2)
    assert plain == with_workers
    assert plain[0] != plain[1] != plain[2]  # still a new order each epoch


@pytest.mark.slow
def test_seeded_runs_give_the_same_losses_and_metrics_every_epoch_with_workers_and_caches(tmp_path):
    """A seeded run from a PNG folder: workers and caches change the speed, not the numbers, in any epoch.

    Issue 22.2: F1 0.5842 with 0 workers and 0.6085 with 2 after the first epoch.
    """
    from loradex.core.training import TrainRequest, train_adapter
    from loradex.plugins.shapes import SHAPES, single_shape_image

    root = tmp_path / "shapes"
    for split, count in (("train", 30), ("val", 10)):
        for index in range(count):
            folder = root / split / SHAPES[index % len(SHAPES)]
            folder.mkdir(parents=True, exist_ok=True)
            single_shape_image(5, index + (0 if split == "train" else 1000), 80, index % len(SHAPES)).save(
                folder / f"{index}.png")
    outcomes, said = {}, {}
    for name, extra in (("plain", {"workers": 0}), ("workers", {"workers": 2}), ("ram", {"cache": "ram"}),
                        ("disk", {"cache": "disk", "workers": 1})):
        request = TrainRequest(task="classification", data=str(root), project=tmp_path / "runs", run_name=name,
                               train={"epochs": 3, "batch_size": 8, **extra})
        said[name] = []
        outcomes[name] = train_adapter(request, progress=False, say=said[name].append)
    # the caches really served the pixels (an unused cache would make the equality below trivially true)
    for name, where in (("ram", ("of RAM",)), ("disk", ("of disk", "reusing"))):
        assert any(line.startswith("cache: ") and any(w in line for w in where) for line in said[name]), said[name]
    assert not any(line.startswith("cache:") for line in said["plain"] + said["workers"])
    losses = {name: [x for e in o.result.history for x in (e.train_loss, e.val_loss)] for name, o in outcomes.items()}
    assert len(losses["plain"]) == 6
    for name in ("workers", "ram", "disk"):
        assert losses[name][:2] == pytest.approx(losses["plain"][:2], rel=1e-6), name  # the first epoch
        assert losses[name] == pytest.approx(losses["plain"], rel=1e-6), name  # and every later one
        assert outcomes[name].metrics == pytest.approx(outcomes["plain"].metrics, rel=1e-6), name


def test_a_disk_cache_that_cannot_be_written_is_one_line_before_training(tiny_backbone, tmp_path, monkeypatch):
    """Issue 22.12: `train --cache disk` where the cache folder cannot be written ended in two chained
    tracebacks; now one line says where and what to do instead, before any epoch."""
    from click.testing import CliRunner

    from loradex.registry.cli import cli

    for label in ("a", "b"):
        (tmp_path / "data" / label).mkdir(parents=True)
        paths, _ = write_folder(tmp_path / "data" / label, count=8)
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the cache folder should be")
    with pytest.raises(ConfigError, match=r"--cache disk cannot write in .*blocked.*train with --cache ram"):
        ImageCache(paths, tiny_backbone.transform_at(None), kind="disk", folder=blocked / "images").fill(
            say=lambda line: None)
    monkeypatch.setenv("LORADEX_HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "cache").write_text("not a folder")
    result = CliRunner().invoke(cli, ["train", "classification", "--data", str(tmp_path / "data"), "--cache", "disk",
                                      "--epochs", "1", "--no-progress", "--project", str(tmp_path / "runs")])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert result.stderr.strip().splitlines()[-1].startswith("Error: --cache disk cannot write in "), result.stderr


def test_home_option_moves_the_image_cache_with_the_registry(tmp_path, isolated_home):
    """`adapters --home DIR train --cache disk` kept its registry in DIR but its image cache under
    $LORADEX_HOME; the whole home moves now, and the environment is as it was afterwards."""
    import os

    from click.testing import CliRunner

    from loradex.registry.cli import cli

    for label in ("a", "b"):
        (tmp_path / "data" / label).mkdir(parents=True)
        write_folder(tmp_path / "data" / label, count=4)
    home = tmp_path / "elsewhere"
    result = CliRunner().invoke(cli, ["--home", str(home), "train", "classification", "--data", str(tmp_path / "data"),
                                      "--cache", "disk", "--epochs", "1", "--workers", "0", "--no-progress",
                                      "--project", str(tmp_path / "runs")])
    assert result.exit_code == 0, result.output
    assert any((home / "cache" / "images").iterdir()) and (home / "index.db").is_file()
    assert not (isolated_home / "cache").exists()
    assert os.environ["LORADEX_HOME"] == str(isolated_home)


def test_an_augmentation_the_task_does_not_apply_is_named(tmp_path):
    from loradex.core.training import TrainRequest, train_adapter

    for label in ("a", "b"):
        (tmp_path / "data" / label).mkdir(parents=True)
        write_folder(tmp_path / "data" / label, count=4)
    said = []
    train_adapter(TrainRequest(task="classification", data=str(tmp_path / "data"), project=tmp_path / "runs",
                               train={"epochs": 1, "flipud": 0.5, "workers": 0}), progress=False, say=said.append)
    assert "warning: task 'classification' does not apply flipud (it trains on the images as they are); it applies none" in said
