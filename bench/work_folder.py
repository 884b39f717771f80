"""A bench's work folder: its own registry home, and the figures so far as JSON (a re-run continues from them)."""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable


@dataclass
class WorkFolder:
    """Where a bench writes: ``path``, the registry under ``path/home``, and ``report`` (saved to ``report_file``)."""

    path: Path
    report_file: Path
    report: dict
    registry: Any

    def save(self) -> None:
        """The figures so far, as JSON."""
        self.report_file.write_text(json.dumps(self.report, indent=2, default=str) + "\n", encoding="utf-8")

    def measured(self, key: str, run: Callable[[], dict]) -> dict:
        """``report[key]``, measured by ``run()`` and saved first if the folder lacks it."""
        if key not in self.report:
            self.report[key] = run()
            self.save()
        return self.report[key]


def open_work(description: str, *, default: str, parts: str, report: str) -> tuple[list[str], WorkFolder]:
    """Parse ``--work`` and ``--parts``; make the folder, point ``LORADEX_HOME`` into it, read its report."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--work", type=Path, default=Path(default))
    parser.add_argument("--parts", default=parts)
    args = parser.parse_args()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("LORADEX_HOME", str(work / "home"))
    from loradex.registry.store.registry import Registry

    saved = work / report
    found = json.loads(saved.read_text()) if saved.is_file() else {}
    return args.parts.split(","), WorkFolder(path=work, report_file=saved, report=found,
                                            registry=Registry.open(work / "home"))
