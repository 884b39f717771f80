"""``adapters demo``: a Gradio page over the shelf — one upload, every chosen task drawn on it.

The page is a thin layer over the Python API: :class:`DemoSession` keeps ONE
:class:`~loradex.core.multitask.MultiTaskModel` and makes its attached adapters follow the
page's choice with ``add`` / ``remove``, so choosing another version of an adapter reuses the
base already in memory. Faults (a bad image, an adapter that fails) become an error on the page,
never a dead server.
"""

from __future__ import annotations

import atexit
import shutil
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from loradex.core.errors import ConfigError, LoradexError
from loradex.core.scratch import make_scratch

from loradex.registry.loading import parse_refs, resolve
from loradex.registry.store.registry import Registry, VersionRecord

PAGE_TITLE = "loradex — one base, every task"
MAX_PIXELS = 40_000_000
"""Largest upload the page decodes, in pixels (a decompression bomb is refused from its header)."""


class DemoSession:
    """The registry and the one shared-base model behind the page (thread-safe)."""

    def __init__(self, registry: Registry, *, device: Any = None) -> None:
        self.registry, self.device = registry, device
        self.model: Any = None
        self.chosen: list[str] = []
        """The attached versions (``name@vN``) in the order the page lists them."""
        self.loads = 0
        """How many times a base was loaded (a version switch on the same base does not add one)."""
        self._lock = threading.Lock()

    def choices(self) -> list[str]:
        """Every stored version as ``name@vN``, each adapter newest first, plus its aliases (``name@prod``)."""
        out: list[str] = []
        for summary in self.registry.list():
            out += [f"{summary.name}@{alias}" for alias in sorted(summary.aliases)]
            out += [f"{summary.name}@v{v.version}" for v in reversed(self.registry.versions(summary.name))]
        return out

    def default_choice(self, refs: Sequence[str]) -> list[str]:
        """``refs`` as the page shows them (``name@vN``); with none, the latest of every adapter on one base."""
        if refs:
            return [resolve(self.registry, ref).ref for ref in refs]
        summaries = self.registry.list()
        if not summaries:
            return []
        base = summaries[0].base
        return [f"{s.name}@v{s.latest}" for s in summaries if s.base == base]

    def sync(self, refs: Sequence[str]) -> Any:
        """Make the model hold exactly ``refs``: detach what is no longer chosen, attach what is new.

        The base loads only when there is none yet or the chosen adapters sit on another base.
        """
        from loradex.core.multitask import check_same_base

        if not refs:
            raise ConfigError("choose at least one adapter")
        records = [resolve(self.registry, ref) for ref in refs]
        check_same_base([(r.ref, r.spec) for r in records])
        wanted = list(dict.fromkeys(r.ref for r in records))
        self.chosen = wanted
        if self.model is not None and not _same_base(self.model, records[0]):
            self.model = None
        if self.model is None:
            from loradex.registry.loading import load

            self.model = load(wanted, device=self.device, registry=self.registry)
            self.loads += 1
            return self.model
        for ref in [r for r in self.model.adapters if r not in wanted]:
            self.model.remove(ref)
        for ref in wanted:
            if ref not in self.model.adapters:
                self.model.add(ref)
        return self.model

    def run(self, image: Any, refs: Sequence[str], *, text: str = "") -> tuple[Any, dict[str, Any]]:
        """(one drawing with every chosen task on it, the ``adapters predict --json`` record) for ``image``."""
        if image is None:
            raise ConfigError("upload an image or pick an example first")
        with self._lock:
            model = self.sync(refs)
            options = _text_options(model, text)
            (result,) = model.predict(image, tasks=self.chosen, **options)
        return result.draw(), result.to_dict()

    def describe(self, refs: Sequence[str]) -> str:
        """Markdown for the side panel: each chosen version's task, aliases, metrics and lineage."""
        blocks = []
        for ref in refs:
            try:
                record = resolve(self.registry, ref)
            except LoradexError as exc:
                blocks.append(f"### {ref}\n\n{exc}")
                continue
            blocks.append(_describe(record, self.registry))
        return "\n\n".join(blocks) or "Choose adapters to see their versions, metrics and lineage."


def _same_base(model: Any, record: VersionRecord) -> bool:
    ref = model.backbone.ref
    wanted = record.spec.backbone
    return ref.name == wanted.name and (not wanted.fingerprint or ref.fingerprint == wanted.fingerprint)


def _text_options(model: Any, text: str) -> dict[str, Any]:
    """The page's text box as the ``text`` option of the chosen tasks that take one (phrase grounding)."""
    import dataclasses

    from loradex.core import plugins

    text = text.strip()
    if not text:
        return {}
    takers = [a for a in model.adapters.values()
              if any(f.name == "text" for f in dataclasses.fields(plugins.get_task(a.spec.task).predict_options))]
    if not takers:
        raise ConfigError("none of the chosen adapters takes a text prompt; clear the prompt box")
    return {"text": text}


def _describe(record: VersionRecord, registry: Registry) -> str:
    versions = registry.versions(record.name)
    aliases = {alias: v.ref for v in versions for alias in v.aliases}
    metrics = ", ".join(f"{k} {v:.3f}" for k, v in sorted(record.metrics.items()) if not k.startswith(("ap_", "ap50_")))
    lines = [
        f"### {record.ref} — {record.task}",
        f"- made: {record.kind}, {record.created}, {record.size / 1e6:.2f} MB, base `{record.base}`",
        f"- versions: {', '.join(f'v{v.version}' for v in versions)}",
        f"- aliases: {', '.join(f'{a} → {r}' for a, r in sorted(aliases.items())) or 'none'}",
        f"- metrics: {metrics or 'none'}",
        "- lineage:",
        *registry.lineage(record).lines(bullet="- ", include_self=True, indent=1),
    ]
    return "\n".join(lines)


def example_images(folder: Path) -> list[str]:
    """The pictures the installed tasks offer to try the page on (:meth:`Task.example_images`), saved in ``folder``."""
    from loradex.core import plugins

    folder.mkdir(parents=True, exist_ok=True)
    pictures: dict[str, Any] = {}
    for registration in plugins.get_tasks().values():
        for name, picture in registration.obj.example_images().items():
            pictures.setdefault(name, picture)
    for name, picture in pictures.items():
        picture.save(folder / name)
    return [str(folder / name) for name in pictures]


def page_error(gr: Any, line: str) -> Any:
    """A user's mistake as the page shows it, and ONE line in the terminal (no traceback)."""
    print(f"demo: {line}", file=sys.stderr)
    return gr.Error(line, print_exception=False)


def check_uploads(gr: Any, component: Any) -> None:
    """Read an upload's header with loradex's checks before Gradio opens it.

    Gradio's ``Image`` opens every upload with PIL before the page's function runs, so a text
    file or a decompression bomb would end in Gradio's generic "could not preprocess" error
    (and a traceback); this makes it loradex's line, naming the uploaded file.
    """
    from .serve.decoding import open_checked

    gradio_preprocess = component.preprocess

    def preprocess(payload: Any) -> Any:
        path = getattr(payload, "path", None)
        if path:
            name = getattr(payload, "orig_name", None) or Path(path).name
            try:
                open_checked(Path(path).read_bytes(), name=name, max_pixels=MAX_PIXELS, hint="").close()
            except LoradexError as exc:
                raise page_error(gr, str(exc)) from None
        return gradio_preprocess(payload)

    component.preprocess = preprocess


def build_app(session: DemoSession, *, refs: Sequence[str] = ()) -> Any:
    """The Gradio Blocks app: image + adapters + prompt in; drawing, JSON and the registry panel out."""
    import gradio as gr

    chosen = session.default_choice(parse_refs(list(refs)) if refs else [])

    def predict(image: Any, selected: list[str] | None, text: str | None):
        try:
            drawing, record = session.run(image, list(selected or []), text=text or "")
        except LoradexError as exc:
            raise page_error(gr, str(exc)) from None
        except Exception as exc:  # an adapter or image the libraries choke on: report, keep serving
            raise gr.Error(f"{type(exc).__name__}: {exc}") from None  # a bug: Gradio prints its traceback
        return drawing, record

    def describe(selected: list[str] | None) -> str:
        return session.describe(list(selected or []))

    with gr.Blocks(title=PAGE_TITLE) as app:
        gr.Markdown(f"## {PAGE_TITLE}\nUpload an image, choose adapters (any versions on one base), press **Run**.")
        with gr.Row():
            with gr.Column(scale=3):
                image = gr.Image(type="filepath", label="Image", elem_id="image", sources=["upload", "clipboard"])
                check_uploads(gr, image)
                adapters = gr.Dropdown(choices=session.choices(), value=chosen, multiselect=True, allow_custom_value=True,
                                       label="Adapters", elem_id="adapters")
                text = gr.Textbox(label="Prompt (for tasks that take one, e.g. phrase grounding)",
                                  placeholder="the red circle", elem_id="prompt")
                run = gr.Button("Run", variant="primary", elem_id="run")
                examples = make_scratch("demo")
                atexit.register(shutil.rmtree, examples, True)  # Gradio serves them until the page stops
                gr.Examples(example_images(examples), inputs=[image])
            with gr.Column(scale=4):
                drawing = gr.Image(type="pil", label="Every task on one drawing", show_label=False, elem_id="drawing",
                                   interactive=False, format="png")
                record = gr.JSON(label="Predictions (as adapters predict --json)", elem_id="predictions")
            with gr.Column(scale=2):
                panel = gr.Markdown(session.describe(chosen), elem_id="registry")
        run.click(predict, inputs=[image, adapters, text], outputs=[drawing, record], api_name="predict")
        adapters.change(describe, inputs=[adapters], outputs=[panel], api_name="describe")
    return app


def serve(refs: Sequence[str], *, host: str, port: int | None, share: bool, home: str | Path | None,
          device: Any = None, block: bool = True) -> Any:
    """Build the page for the registry at ``home`` and serve it on ``host:port`` (public only with ``share``)."""
    registry = Registry.open(home)
    session = DemoSession(registry, device=device)
    if refs:
        session.sync([resolve(registry, ref).ref for ref in refs])  # fail before serving if a ref is wrong
    app = build_app(session, refs=refs)
    app.queue(default_concurrency_limit=1)
    app.launch(server_name=host, server_port=port, share=share, prevent_thread_lock=not block,
               show_error=True, quiet=not block)
    return app
