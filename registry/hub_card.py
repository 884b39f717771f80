"""The model card a pushed version carries: the metadata the Hub reads, built with huggingface_hub's card classes.

Metadata: ``library_name: peft``, ``base_model`` (when the base is a Hub id) with
``base_model_relation: adapter``, ``pipeline_tag`` from the task, ``tags`` (loradex and the
tasks) and ``model-index`` with the stored metrics. The body shows loading with loradex and
with plain PEFT, the lineage and the training settings.
"""

from __future__ import annotations

import json
import re
from typing import Any

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def model_card(record: Any, *, repo_id: str, tag: str, lineage: list[str]) -> str:
    """README.md text for ``record`` pushed to ``repo_id`` as ``tag``."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    spec = record.spec
    base = spec.backbone
    tasks = list(spec.tasks)
    pipeline_tag = pipeline_tag_of(record.task)
    results = [
        EvalResult(task_type=pipeline_tag or record.task, dataset_type=str(record.args.get("data")
                   or "unknown"), dataset_name=str(record.args.get("data") or "unknown"), metric_type=name,
                   metric_value=value)
        for name, value in sorted(record.metrics.items()) if isinstance(value, (int, float))
    ]
    extra: dict[str, Any] = {}
    if _REPO_ID.match(base.name):
        extra["base_model"] = base.name
        extra["base_model_relation"] = "adapter"
    data = ModelCardData(
        library_name="peft", pipeline_tag=pipeline_tag if len(tasks) == 1 else None,
        tags=["loradex", "lora", *tasks], model_name=repo_id, eval_results=results or None, **extra,
    )
    revision = f'"{tag}"'
    head = "heads" if spec.is_multitask else "head"
    body = f"""
# {repo_id} ({tag})

A [loradex](https://github.com/loradex/loradex) LoRA adapter for **{', '.join(tasks)}** on the shared base
`{base.name}`{f' at `{base.revision}`' if base.revision else ''} (fingerprint `{base.fingerprint or 'unknown'}`):
a LoRA in PEFT's format plus the task {head}. Stored locally as `{record.ref}`.

## Use it with loradex

```bash
adapters pull {repo_id}@{tag}
adapters predict {repo_id}@{tag} photo.jpg --json
```

```python
import loradex
model = loradex.load(["{repo_id}@{tag}"])   # pulled on demand
print(model.predict("photo.jpg")[0].to_dict())
```

## Use the LoRA with plain PEFT

```python
from peft import PeftModel
model = PeftModel.from_pretrained(base, "{repo_id}", revision={revision})   # base: {base.name}
```

## Lineage

{_lineage(record, lineage)}

## Settings

- LoRA: rank {spec.lora.rank}, alpha {spec.lora.alpha:g}, dropout {spec.lora.dropout:g}, targets {', '.join(spec.lora.targets)}
- training: {json.dumps(spec.to_dict()["train"], sort_keys=True)}
- input size: {', '.join(f'{h.name} {h.image_size}px' for h in spec.head_specs())}
"""
    return str(ModelCard.from_template(data, template_str="---\n{{ card_data }}\n---\n" + body))


def pipeline_tag_of(task: str) -> str | None:
    """The Hub pipeline tag the task declares (:attr:`Task.pipeline_tag`); None for an uninstalled task."""
    from loradex.core import plugins
    from loradex.core.errors import LoradexError

    try:
        return plugins.get_task(task).pipeline_tag
    except LoradexError:
        return None


def _lineage(record: Any, lineage: list[str]) -> str:
    lines = [f"- kind: {record.kind}" + (f", made from {', '.join(record.parents)}" if record.parents else "")]
    args = {k: v for k, v in record.args.items() if k in ("method", "weights", "density", "rank", "energy", "dtype",
                                                              "base_adapter", "init", "data")}
    if args:
        lines.append("- how: " + ", ".join(f"{k}={v}" for k, v in sorted(args.items())))
    lines += [f"- {entry}" for entry in lineage]
    return "\n".join(lines)
