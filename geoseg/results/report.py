"""A job's report as one self-contained HTML page: totals, a table of scenes (failures first)
with their class areas, thumbnails and links to the outputs, and the job's class areas summed.

No scripts, fonts or style sheets from elsewhere: thumbnails are embedded as data URIs and
outputs are linked by relative paths, so the page works offline and from an object store.
"""

from __future__ import annotations

import base64
import html
import io
import os
from pathlib import Path
from typing import Any

from geoseg.fs import stage_bytes
from geoseg.results.quicklook import format_area
from geoseg.results.tables import publish

#: Order of the scene table: what needs attention first.
STATUS_ORDER = {"failed": 0, "partial": 1, "done": 2, "skipped": 3}
#: Width of the embedded thumbnails, pixels.
THUMB_WIDTH = 240

_CSS = """
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px;color:#1e1e1e}
h1{font-size:20px;margin:0 0 4px}h2{font-size:16px;margin:24px 0 8px}
.muted{color:#666}table{border-collapse:collapse}
th,td{border-bottom:1px solid #ddd;padding:6px 10px;text-align:left;vertical-align:top}
th{background:#f4f4f4}td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
.totals td{padding:2px 16px 2px 0;border:0}
.status{font-weight:600;border-radius:3px;padding:1px 6px}
.failed{background:#fde2e1;color:#a4161a}.partial{background:#fff3cd;color:#7a5b00}
.done{background:#e3f4e5;color:#1b6e2a}.skipped{background:#eee;color:#555}
.err{color:#a4161a;max-width:40em}img{display:block;border:1px solid #ccc}
.swatch{display:inline-block;width:10px;height:10px;margin-right:4px;border:1px solid #555}
ul.areas{list-style:none;margin:0;padding:0}
"""


def _marker(job: str) -> str:
    """What the page says made it: a later run of the same job may replace it."""
    return f"geoseg job report of {job}"


def check_report_page(page: Path, job: str, overwrite: bool) -> None:
    """Refuse, before any work, to replace a ``report.html`` that is not this job's last report
    (unless ``overwrite``)."""
    from geoseg.fs import check_output_path

    if not page.parent.exists():
        return  # the job's folder, made when the job starts (its JSON report was checked)
    if page.is_file() and not overwrite:
        try:
            head = page.read_text(errors="replace")[:4096]
        except OSError:
            head = ""
        if f'<meta name="generator" content="{html.escape(_marker(job))}">' in head:
            return
    check_output_path(page, overwrite, "HTML job report")


def report_path(json_report: str | os.PathLike[str]) -> Path:
    """The HTML report beside a JSON report: ``report.html`` in its folder."""
    return Path(json_report).with_name("report.html")


def thumbnail(png: Path, width: int = THUMB_WIDTH) -> str | None:
    """A quicklook PNG shrunk to ``width`` as a ``data:`` URI (None when it cannot be read)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(png) as im:
            im = im.convert("RGB")
            im.thumbnail((width, width * 4))
            buf = io.BytesIO()
            im.save(buf, format="PNG", optimize=True)
    except (OSError, UnidentifiedImageError):
        return None
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def render_report(report: dict[str, Any], folder: Path, page: Path) -> str:
    """The page for a batch report (:meth:`geoseg.jobs.report.BatchReport.as_dict`), whose scene
    outputs are named relative to ``folder``, linked relative to ``page``."""
    e = html.escape
    scenes = sorted(
        report.get("scenes", []), key=lambda s: STATUS_ORDER.get(s.get("status", ""), 9)
    )
    rel = os.path.relpath(folder, page.parent)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta name="generator" content="{e(_marker(str(report.get("job", ""))))}">',
        f"<title>geoseg job report: {e(Path(str(report.get('job', 'job'))).name)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>geoseg job report: {e(Path(str(report.get('job', ''))).name)}</h1>",
        f'<p class="muted">{e(str(report.get("job", "")))} · geoseg {e(str(report.get("geoseg_version", "")))}</p>',
        '<table class="totals"><tr>',
    ]
    for key in ("done", "partial", "skipped", "failed"):
        parts.append(f'<td><span class="status {key}">{key}</span> {int(report.get(key, 0))}</td>')
    mps = report.get("megapixels_per_second")
    parts.append(
        f"<td>{float(report.get('megapixels', 0)):.1f} Mpx in {float(report.get('seconds', 0)):.1f} s"
        + (f" ({float(mps):.2f} Mpx/s)" if mps else "")
        + "</td></tr></table>"
    )
    parts.append(_job_areas(scenes))
    parts.append(
        '<h2>Scenes</h2><table id="scenes"><thead><tr><th>status</th><th>scene</th>'
        '<th class="num">time</th><th class="num">Mpx/s</th><th class="num">skipped tiles</th>'
        "<th>class areas</th><th>quicklook</th><th>outputs</th></tr></thead><tbody>"
    )
    for s in scenes:
        parts.append(_scene_row(s, folder, rel))
    parts.append("</tbody></table></body></html>")
    return "\n".join(parts)


def _areas_list(areas: dict[str, Any]) -> str:
    e = html.escape
    items = []
    for a in sorted(areas.values(), key=lambda a: -float(a.get("area_m2", 0))):
        colour = a.get("color")
        swatch = (
            f'<span class="swatch" style="background:{e(str(colour))}"></span>' if colour else ""
        )
        items.append(
            f"<li>{swatch}{e(str(a.get('class_name', '')))}: {e(format_area(float(a.get('area_m2', 0))))}</li>"
        )
    return '<ul class="areas">' + "".join(items) + "</ul>"


def _job_areas(scenes: list[dict[str, Any]]) -> str:
    """The job's class areas: every scene's, summed by class name."""
    total: dict[str, dict[str, Any]] = {}
    for s in scenes:
        for a in (s.get("class_areas") or {}).values():
            t = total.setdefault(
                str(a.get("class_name")),
                {
                    "class_name": a.get("class_name"),
                    "area_m2": 0.0,
                    "pixels": 0,
                    "color": a.get("color"),
                },
            )
            t["area_m2"] += float(a.get("area_m2", 0))
            t["pixels"] += int(a.get("pixels", 0))
    if not total:
        return ""
    e = html.escape
    rows = "".join(
        f'<tr><td>{f"""<span class="swatch" style="background:{e(str(a["color"]))}"></span>""" if a["color"] else ""}'
        f'{e(str(a["class_name"]))}</td><td class="num">{a["pixels"]:,}</td>'
        f'<td class="num">{e(format_area(a["area_m2"]))}</td></tr>'
        for a in sorted(total.values(), key=lambda a: -a["area_m2"])
    )
    return (
        '<h2>Class areas of the job</h2><table id="job-areas"><thead><tr><th>class</th>'
        f'<th class="num">pixels</th><th class="num">area</th></tr></thead><tbody>{rows}</tbody></table>'
    )


def _scene_row(s: dict[str, Any], folder: Path, rel: str) -> str:
    e = html.escape
    status = str(s.get("status", ""))
    seconds = float(s.get("seconds") or 0)
    mp = float(s.get("megapixels") or 0)
    speed = f"{mp / seconds:.2f}" if seconds and mp else ""
    outputs = [str(o) for o in s.get("outputs") or []]
    png = next((o for o in outputs if o.lower().endswith(".png")), None)
    thumb = thumbnail(folder / png) if png else None
    links = " ".join(f'<a href="{e(_href(rel, o))}">{e(o)}</a><br>' for o in outputs)
    error = f'<div class="err">{e(str(s["error"]))}</div>' if s.get("error") else ""
    return (
        f'<tr class="scene {e(status)}"><td><span class="status {e(status)}">{e(status)}</span></td>'
        f'<td>{e(str(s.get("scene", "")))}{error}</td><td class="num">{seconds:.1f} s</td>'
        f'<td class="num">{speed}</td><td class="num">{int(s.get("skipped_tiles") or 0)}</td>'
        f"<td>{_areas_list(s.get('class_areas') or {})}</td>"
        f'<td>{f"""<img src="{thumb}" alt="quicklook of {e(str(s.get("scene", "")))}">""" if thumb else ""}</td>'
        f"<td>{links}</td></tr>"
    )


def _href(rel: str, name: str) -> str:
    from urllib.parse import quote

    path = name if rel in ("", ".") else f"{rel}/{name}"
    return quote(path.replace(os.sep, "/"))


def write_report(
    report: dict[str, Any], folder: str | os.PathLike[str], page: str | os.PathLike[str]
) -> Path:
    """Write the HTML report (:func:`render_report`) to ``page`` atomically, with the umask."""
    page = Path(page)
    text = render_report(report, Path(folder), page)
    publish(stage_bytes(page, text.encode(), ".part.html"), page)
    return page
