"""The summary of a batch run: report.md and report.html (a before/after contact sheet and the metrics table,
one line per manifest row, invalid ones included), contact-sheet-NN.png and summary.json, all in OUT_DIR.

Paths in the reports are relative, so the output folder can be moved or served as it is.
"""

from __future__ import annotations

import hashlib
import html
import json
import math
import re
from pathlib import Path

from .files import atomic_write_many, atomic_write_png, inside, read_json

THUMBNAIL = 96
ROWS_PER_SHEET = 40
STATES = ("ok", "warning", "failed", "invalid", "not run")  # warning: done, but suspect (rows.suspect_results)
DONE = ("ok", "warning")


def _read_png(path: Path):
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, ValueError):
        return None


def _thumbnail(image):
    from PIL import Image

    if image is None:
        return Image.new("RGB", (THUMBNAIL, THUMBNAIL), "white")
    method = Image.NEAREST if image.width < THUMBNAIL else Image.LANCZOS
    return image.resize((THUMBNAIL, THUMBNAIL), method)


def row_pictures(out_dir, entry: dict) -> list[tuple[str, str]]:
    """[(label, file name)] of a finished row: input (if any), source or reconstruction, the edits."""
    status = entry.get("status") or {}
    files = status.get("files", [])
    pictures = []
    if "input.png" in files:
        pictures.append(("input", "input.png"))
    if "source.png" in files:
        pictures.append(("source" if "input.png" not in files else "reconstr.", "source.png"))
    edits = sorted((name for name in files if name.startswith("edit-") and name.endswith(".png")),
                   key=lambda name: int(name[5:-4]) if name[5:-4].isdigit() else 0)
    pictures += [(f"edit {name[5:-4]}", name) for name in edits]
    return pictures


def contact_sheets(out_dir, entries: list[dict]) -> list[str]:
    """Before/after grids of the finished rows (a line per row, labelled with its id), ROWS_PER_SHEET per file."""
    from ..viz import image_grid

    done = [entry for entry in entries if entry["state"] in DONE]
    names = []
    for page, start in enumerate(range(0, len(done), ROWS_PER_SHEET), start=1):
        group = done[start : start + ROWS_PER_SHEET]
        layouts = [row_pictures(out_dir, entry) for entry in group]
        columns = max(len(layout) for layout in layouts)
        images, labels = [], []
        for entry, layout in zip(group, layouts):
            folder = inside(out_dir, "rows", entry["id"])
            for label, name in layout:
                images.append(_thumbnail(_read_png(folder / name)))
                labels.append(label)
            for _ in range(columns - len(layout)):
                images.append(_thumbnail(None))
                labels.append("")
        sheet = image_grid(images, columns=columns, labels=labels, row_labels=[e["id"] for e in group], scale=1)
        name = f"contact-sheet-{page:02d}.png"
        atomic_write_png(inside(out_dir, name), sheet)
        names.append(name)
    for stale in Path(out_dir).glob("contact-sheet-*.png"):
        if stale.name not in names:
            stale.unlink(missing_ok=True)
    return names


def _number(value, digits: int = 2) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return "nan" if not math.isfinite(value) else f"{value:.{digits}f}"
    return ""


def _as_written(value) -> str:
    """A manifest cell as its author wrote it: a YAML list of prompts joined with ' | ' (the CSV way), not a
    Python list; numbers and text unchanged; nothing for a missing cell."""
    if value is None:
        return ""
    if isinstance(value, list):
        return " | ".join(_as_written(item) for item in value)
    if isinstance(value, dict):
        return ", ".join(f"{key}: {_as_written(item)}" for key, item in value.items())
    return str(value)


def table_rows(out_dir, entries: list[dict]) -> list[dict]:
    """One dict of display strings per manifest row (what both reports show)."""
    rows = []
    for entry in entries:
        spec = entry.get("spec") or {}
        status = entry.get("status") or {}
        metrics = entry.get("metrics") or {}
        edit = spec.get("edit") or {}
        image = spec.get("image") or {}
        values = entry.get("values") or {}
        if image.get("kind") == "file":
            source = Path(image["path"]).name
        elif image.get("kind") == "scene":
            source = f"scene {image['scene_seed']}" if image.get("scene_seed") is not None else "scene"
        elif image:
            source = f"generated, seed {spec.get('seed')}"
        else:
            source = str(values.get("image") or values.get("scene_seed") or "")
        targets = metrics.get("targets", [])

        def per_target(name, digits=2):
            return " / ".join(_number(t.get(name), digits) for t in targets if name in t)

        inversion = spec.get("inversion") or {}
        message = ""
        if entry["state"] == "invalid":
            message = "; ".join(entry.get("errors", []))
        elif entry["state"] == "failed":
            message = status.get("error") or ""
        elif status.get("suspect") or status.get("warnings"):
            message = "; ".join([*status.get("suspect", []), *status.get("warnings", [])])
        rows.append({
            "#": str(entry["number"]),
            "id": entry.get("id") or f"(row {entry['number']})",
            "status": entry["state"],
            "image": source,
            "edit": spec.get("edit_kind") or _as_written(values.get("edit")) or "replace (the default)",
            "inversion": inversion.get("method", "") if inversion else "",
            "prompts": (edit.get("source_prompt") or _as_written(values.get("source_prompt"))) + " -> "
            + (" | ".join(edit.get("target_prompts") or []) or _as_written(values.get("target_prompts"))),
            "PSNR to source": per_target("psnr_to_source"),
            "SSIM to source": per_target("ssim_to_source", 3),
            "background PSNR": per_target("background_psnr_to_input"),
            "reconstr. PSNR": _number((metrics.get("reconstruction") or {}).get("psnr")),
            "target matched": per_target("target_matched"),
            "seconds": _number(status.get("seconds"), 1),
            "message": message,
            "notes": spec.get("notes") or "",
        })
    return rows


def _counts(entries: list[dict]) -> dict:
    return {state: sum(entry["state"] == state for entry in entries) for state in STATES}


def _md_cell(text: str) -> str:
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ").replace("\r", " ")


def markdown_report(title: str, info: dict, entries: list[dict], rows: list[dict], sheets: list[str]) -> str:
    counts = _counts(entries)
    lines = [f"# {title}", ""]
    lines += [f"- **{name}**: {_md_cell(value)}" for name, value in info.items()]
    lines += ["- **rows**: " + ", ".join(f"{counts[s]} {s}" for s in STATES), ""]
    if sheets:
        lines += ["## Before / after", ""] + [f"![contact sheet]({name})" for name in sheets] + [""]
    lines += ["## Rows", ""]
    columns = list(rows[0]) if rows else []
    lines.append("| " + " | ".join(columns) + " |")
    lines.append("|" + "---|" * len(columns))
    for row in rows:
        lines.append("| " + " | ".join(_md_cell(row[c]) for c in columns) + " |")
    lines += ["", "Per row: `rows/<id>/` holds the images, `attention.png`, `metrics.json` and `status.json`; "
              "the executed notebooks are in `notebooks/`.", ""]
    return "\n".join(lines)


def html_report(title: str, info: dict, entries: list[dict], rows: list[dict], sheets: list[str], out_dir) -> str:
    esc = html.escape
    counts = _counts(entries)
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">', f"<title>{esc(title)}</title>",
        "<style>body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse;font-size:0.85em}"
        "td,th{border:1px solid #ccc;padding:3px 6px;vertical-align:top}th{background:#eee}"
        "tr.failed td{background:#fdd}tr.invalid td{background:#fec}tr.warning td{background:#ffd}img.t{width:64px;image-rendering:pixelated}"
        "img.sheet{max-width:100%;image-rendering:pixelated}</style></head><body>",
        f"<h1>{esc(title)}</h1><ul>",
    ]
    parts += [f"<li><b>{esc(name)}</b>: {esc(str(value))}</li>" for name, value in info.items()]
    parts.append("<li><b>rows</b>: " + esc(", ".join(f"{counts[s]} {s}" for s in STATES)) + "</li></ul>")
    if sheets:
        parts.append("<h2>Before / after</h2>")
        parts += [f'<p><img class="sheet" src="{esc(name)}" alt="contact sheet"></p>' for name in sheets]
    parts.append("<h2>Rows</h2><table><tr>")
    columns = list(rows[0]) if rows else []
    parts += [f"<th>{esc(c)}</th>" for c in columns] + ["<th>images</th><th>files</th></tr>"]
    for entry, row in zip(entries, rows):
        parts.append(f'<tr class="{esc(entry["state"])}">'
                     + "".join(f"<td>{html.escape(row[c], quote=False)}</td>" for c in columns))
        images, links = "", ""
        if entry["state"] in (*DONE, "failed") and entry.get("id"):
            base = f"rows/{entry['id']}/"
            images = "".join(
                f'<img class="t" src="{esc(base + name)}" alt="{esc(label)}" title="{esc(label)}">'
                for label, name in row_pictures(out_dir, entry)
            )
            files = [name for name in ("attention.png", "comparison.png", "metrics.json")
                     if name in (entry.get("status") or {}).get("files", [])] + ["status.json"]
            links = " ".join(f'<a href="{esc(base + name)}">{esc(name)}</a>' for name in files)
            notebook = (entry.get("status") or {}).get("notebook")
            if notebook:
                links += f' <a href="{esc(notebook)}">notebook</a>'
        parts.append(f"<td>{images}</td><td>{links}</td></tr>")
    parts += ["</table></body></html>", ""]
    return "\n".join(parts)


def write_report(out_dir, entries: list[dict], info: dict | None = None, title: str = "diffusion-lab batch report") -> dict:
    """Write report.md, report.html, the contact sheet(s) and summary.json; returns {name: path}.

    entries: one per manifest row, in order: {"number", "id", "state": ok|warning|failed|invalid|not run, "spec" (valid
    rows), "values" and "errors" (invalid rows), "status" (rows/<id>/status.json)}. metrics.json of finished rows
    is read here.
    """
    out = Path(out_dir)
    info = dict(info or {})
    for entry in entries:
        if entry["state"] in DONE and entry.get("id") and "metrics" not in entry:
            entry["metrics"] = read_json(inside(out, "rows", entry["id"], "metrics.json"), {})
    sheets = contact_sheets(out, entries)
    rows = table_rows(out, entries)
    summary = {**info, "counts": _counts(entries), "contact_sheets": sheets, "rows": [
        {"number": e["number"], "id": e.get("id"), "state": e["state"],
         "key": (e.get("status") or {}).get("key") or e.get("key"),
         "error": (e.get("status") or {}).get("error") if e["state"] == "failed" else None,
         "errors": e.get("errors") if e["state"] == "invalid" else None,
         "warning": (e.get("status") or {}).get("suspect") if e["state"] == "warning" else None}
        for e in entries
    ]}
    # The three files carry one report id (a hash of the summary): report_id() reads it back from each.
    report = hashlib.sha256(json.dumps(summary, sort_keys=True, allow_nan=False).encode()).hexdigest()[:16]
    summary["report_id"] = report
    info = {**info, "report id": report}
    texts = {
        "markdown": (inside(out, "report.md"), markdown_report(title, info, entries, rows, sheets)),
        "html": (inside(out, "report.html"), html_report(title, info, entries, rows, sheets, out)),
        "summary": (inside(out, "summary.json"), json.dumps(summary, indent=2, allow_nan=False) + "\n"),
    }
    atomic_write_many({path: text.encode("utf-8") for path, text in texts.values()})
    paths = {name: path for name, (path, _) in texts.items()}
    paths.update({name: out / name for name in sheets})
    return paths


def report_ids(out_dir) -> dict:
    """{file: the report id it carries (None when missing)} for report.md, report.html and summary.json: the
    three agree when they come from one write_report."""
    out = Path(out_dir)
    ids = {}
    for name in ("report.md", "report.html"):
        path = out / name
        text = path.read_text(encoding="utf-8") if path.is_file() else ""
        found = re.search(r"report id(?:\*\*|</b>)?\W*([0-9a-f]{16})", text)
        ids[name] = found.group(1) if found else None
    ids["summary.json"] = (read_json(out / "summary.json", {}) or {}).get("report_id")
    return ids
