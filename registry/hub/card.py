"""The model card a pushed version carries: core's one card builder, told where it is published.

Metadata: ``library_name: peft``, ``base_model`` (when the base is a Hub id) with
``base_model_relation: adapter``, ``pipeline_tag`` from the task, ``tags`` (loradex and the
tasks) and ``model-index`` with the stored metrics. The body shows loading with loradex and
with plain PEFT, the lineage and the training settings.
"""

from __future__ import annotations

from typing import Any

from loradex.core.artifact import HubPlace
from loradex.core.artifact import model_card as adapter_card


def model_card(record: Any, *, repo_id: str, tag: str, lineage: list[str]) -> str:
    """README.md text for ``record`` pushed to ``repo_id`` as ``tag`` (``lineage``: its ancestors' lines)."""
    how = [f"- kind: {record.kind}" + (f", made from {', '.join(record.parents)}" if record.parents else "")]
    args = {k: v for k, v in record.args.items() if k in ("method", "weights", "density", "rank", "energy", "dtype",
                                                              "base_adapter", "init", "data")}
    if args:
        how.append("- how: " + ", ".join(f"{k}={v}" for k, v in sorted(args.items())))
    place = HubPlace(repo_id=repo_id, tag=tag, ref=record.ref, data=record.args.get("data"),
                     lineage=(*how, *(f"- {entry}" for entry in lineage)))
    return adapter_card(record.spec, record.metrics, hub=place)
