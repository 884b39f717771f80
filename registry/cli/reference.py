"""Render docs/cli.md from the click commands themselves, so the reference cannot drift.

    python -m loradex.registry.cli.reference > docs/cli.md
"""

from __future__ import annotations

import click

PREDICT_JSON = """## The JSON of `adapters predict --json`

A JSON array with one record per image, in input order (folders recursively and sorted, globs
sorted). Each record is exactly `ImageResult.to_dict()` of the Python API
(`loradex.load([...]).predict(...)`):

```json
{
  "image": "photos/street.jpg",
  "width": 640,
  "height": 480,
  "base": {"name": "tiny-vit", "revision": null, "fingerprint": "sha256:7bab7793..."},
  "predictions": {
    "classification@v1": {"task": "classification", "label": "circle", "score": 0.98,
                          "top_k": [{"label": "circle", "score": 0.98}, {"label": "square", "score": 0.01}]},
    "detection@v2": {"task": "detection",
                     "detections": [{"label": "square", "score": 0.91, "box": [12.0, 30.5, 88.0, 104.0]}]},
    "pose@v1": {"task": "pose", "score": 0.87,
                "keypoints": [{"name": "head", "x": 51.2, "y": 20.4, "score": 0.93}]}
  }
}
```

- `predictions` is keyed by `name@vN` (aliases are resolved), in the order the refs were given;
  each entry is `{"task": TASK, ...}` plus what that task's `postprocess` returns. Coordinates
  (boxes `[x0, y0, x1, y1]`, keypoints) are pixels of the original image.
- `base` names the one base every adapter ran on: preset, Hub id or path, the pinned revision,
  and the sha256 fingerprint of its weights.
- With `--skip-bad`, an image that cannot be read gets `"error": "..."`, width and height 0 and
  no predictions; the others are predicted as usual.

## The HTTP API of `adapters serve`

`POST /v1/predict` answers `{"results": [RECORD, ...]}`, one record per image in the order
sent, each exactly the record above (`image` is the uploaded file's name, or `<image N>`). The
request is either `multipart/form-data` — `images` (one file part per image), `adapters`
(repeated, or comma-separated refs), `option` (repeated `KEY=VALUE`, as `-o`) or `options` (a
JSON object) — or `application/json`:

```json
{"images": ["<base64>", {"name": "street.jpg", "data": "<base64>"}],
 "adapters": ["classification@prod", "detection"],
 "options": {"top_k": 3, "detection.min_score": 0.5}}
```

or ONE image as the whole body (`image/*` or `application/octet-stream`) with `adapters`,
`option`, `options` and `name` in the query string
(`POST /v1/predict?adapters=cls,det&option=top_k=3&name=street.jpg`), for a client that sends
one image per request and would rather not encode multipart.

An error is `{"error": "one line"}`: 400 bad image, bad option, bad body or an image over
`--max-pixels`; 401 missing or wrong token; 403 a Hub ref without `--allow-hub`; 404 unknown
adapter or version (with a did-you-mean), or a Hub repo or revision that does not exist; 409 an
adapter trained on another base; 413 a body over `--max-body-mb`; 415 another content type;
500 an adapter whose stored files fail their hash; 502 the Hub failed (with `--allow-hub`); 503
queue full or not ready (with `Retry-After`); 504 not answered within `--timeout`.
`GET /v1/adapters`, `GET /v1/adapters/{ref}`, `/healthz`, `/readyz`, `/metrics` and `/docs`
are described in docs/serving.md.
"""


def render_reference(root: click.Group) -> str:
    """Markdown with the help text of the root group and of every built-in command."""
    builtin = {name: command for name, command in root.commands.items()
               if command.callback and command.callback.__module__.startswith("loradex.registry")}
    shown = click.Group(root.name, commands=builtin, params=root.params, help=root.help,
                        context_settings=root.context_settings)
    ctx = shown.make_context("adapters", [], resilient_parsing=True, terminal_width=88, max_content_width=88)
    parts = ["# `adapters` CLI reference", "",
             "Generated from the commands' own help (`python -m loradex.registry.cli.reference`).",
             "Plugins add commands of their own; `adapters --help` lists everything installed.", "",
             "```text", shown.get_help(ctx), "```", ""]
    for name in sorted(builtin):
        command = builtin[name]
        sub = click.Context(command, info_name=name, parent=ctx, terminal_width=88, max_content_width=88)
        parts += [f"## `adapters {name}`", "", "```text", command.get_help(sub), "```", ""]
    parts.append(PREDICT_JSON)
    text = "\n".join(parts)
    return "\n".join(line.rstrip() for line in text.splitlines()) + "\n"


if __name__ == "__main__":
    from . import cli

    click.echo(render_reference(cli), nl=False)
