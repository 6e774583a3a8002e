"""``classify --report report.html``: one self-contained page of the results, to look at rather
than read. A row per input with its thumbnail (and heatmap, where the run made them), label,
probabilities as bars and the reason for every failed or refused input; filters, sorting, a
summary and, where the file names carry the truth, a confusion table.

The page holds its CSS, script and data inline and loads nothing from the network; thumbnails
are small JPEGs in a folder beside it (``report_files/``), named by row number (never after an
input), and load lazily so that thousands of rows stay usable. Every value from an input (its
path, a reason) reaches the page as JSON and is shown as text, never parsed as HTML.
"""
import html
import json
import logging
import os
import shlex
import sys
import time
from collections import Counter
from pathlib import Path

from ..groundtruth import truth
from ..inputs import is_uri
from ..result import Status

log = logging.getLogger("xray_infer.cli")

#: Longest side of a thumbnail, in pixels.
THUMB = 160


def _thumbnail(r, scan=None):
    """(grey thumbnail, heatmap thumbnail or None) as BGR/grey uint8 arrays, or None where the
    input cannot be shown (a URI); ``scan``: the input already decoded, else it is read here
    (a DecodeError where it no longer decodes)."""
    import cv2
    import numpy as np

    from ..decode import read_image
    if scan is None:
        if is_uri(r.source):
            return None
        scan = read_image(r.source, THUMB)
    h, w = scan.pixels.shape
    k = THUMB / max(h, w)
    size = (max(1, round(w * k)), max(1, round(h * k)))
    grey = np.clip(np.asarray(scan.pixels, np.float64) / scan.maxval * 255, 0, 255)
    grey = cv2.resize(grey.astype(np.uint8), size, interpolation=cv2.INTER_AREA)
    heat = None
    if r.heatmap is not None:
        small = cv2.resize(r.heatmap, size, interpolation=cv2.INTER_AREA)
        colour = cv2.applyColorMap((np.clip(small, 0, 1) * 255).astype(np.uint8),
                                   cv2.COLORMAP_JET)  # as heatmap.overlay draws it
        heat = cv2.addWeighted(cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR), 0.6, colour, 0.4, 0)
    return grey, heat


class ResultsPage:
    """Collects a row per Result (``add``) and writes the page on ``close``."""

    def __init__(self, path, spec, variant, overlays=None):
        self.path = Path(path)
        self.files = self.path.with_name(self.path.stem + "_files")
        self.files.mkdir(parents=True, exist_ok=True)
        for old in self.files.glob("*.jpg"):  # a replaced page's pictures go with it
            old.unlink()
        self.spec, self.variant, self.overlays = spec, variant, overlays
        self.rows, self.failed_pictures = [], 0

    def _picture(self, name, image):
        import cv2
        path = self.files / name
        ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 82])
        if not ok:
            raise OSError(f"OpenCV could not encode {path}")
        path.write_bytes(jpeg.tobytes())
        return f"{self.files.name}/{name}"

    def add(self, r, scan=None, picture=True):
        """A row for Result ``r``; ``scan``: its decoded pixels where the caller has them;
        ``picture``: False for none (the row stands alone)."""
        i = len(self.rows)
        row = {"i": i, "path": r.source, "status": r.status.value, "label": r.label,
               "p": r.probabilities, "reason": r.reason, "truth": truth(r.source),
               "thumb": None, "heat": None, "overlay": None}
        self.rows.append(row)  # first: an interruption while drawing keeps the row
        if picture and r.status is not Status.FAILED:
            try:
                pictures = _thumbnail(r, scan)
                if pictures:
                    row["thumb"] = self._picture(f"{i:06d}.jpg", pictures[0])
                    if pictures[1] is not None:
                        row["heat"] = self._picture(f"{i:06d}.heat.jpg", pictures[1])
            except Exception as e:  # the row stands without its picture
                self.failed_pictures += 1
                log.warning("%s: no thumbnail in the report: %s", r.source, e)
        if self.overlays is not None and r.source in self.overlays.paths:
            row["overlay"] = os.path.relpath(self.overlays.paths[r.source], self.path.parent)

    def summary(self):
        """Counts by status and label, and the confusion table (truth x result) of the inputs
        whose names carry their truth (``groundtruth``); None for it where none does."""
        names = list(self.spec.class_names)
        status = Counter(r["status"] for r in self.rows)
        labels = Counter(r["label"] for r in self.rows if r["label"])
        known = [r for r in self.rows if r["truth"]]
        confusion = None
        if known:
            confusion = {t: {p: 0 for p in names + [Status.OUT_OF_SCOPE.value, Status.FAILED.value]}
                         for t in names}
            for r in known:
                confusion[r["truth"]][r["label"] or r["status"]] += 1
        return {"n": len(self.rows), "status": dict(status),
                "labels": {k: labels.get(k, 0) for k in names}, "confusion": confusion,
                "with_truth": len(known)}

    def close(self, interrupted=None):
        """Write the page; ``interrupted``: how the run stopped early, said at its top."""
        from .. import __version__
        meta = {"model_version": self.spec.model_version, "precision": self.variant.precision,
                "package": __version__, "classes": list(self.spec.class_names),
                "interrupted": interrupted,
                "command": " ".join(shlex.quote(a) for a in ["xray-infer", *sys.argv[1:]]),
                "written": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
        data = {"meta": meta, "summary": self.summary(), "rows": self.rows}
        # JSON inside <script>: "</" and "<!--" escaped so that no input's name ends the script
        text = json.dumps(data, ensure_ascii=True).replace("</", "<\\/").replace("<!--", "<\\!--")
        page = _TEMPLATE.replace("__DATA__", text).replace(
            "__TITLE__", html.escape(f"xray-infer results: {len(self.rows)} "
                                      f"input{'' if len(self.rows) == 1 else 's'}"))
        tmp = self.path.with_name(self.path.name + f".tmp{os.getpid()}")
        tmp.write_text(page, encoding="utf-8")
        os.replace(tmp, self.path)
        return self.path


_TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src 'self' file: data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'">
<title>__TITLE__</title>
<style>
body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#1b1f24;background:#f6f7f9}
header{background:#1b2a3a;color:#fff;padding:12px 20px}
header h1{font-size:18px;margin:0 0 4px}
header p{margin:0;font-size:12px;opacity:.85;word-break:break-all}
.warn{background:#fff4d6;border-bottom:1px solid #e6cf8a;padding:6px 20px;font-size:13px}
main{padding:12px 20px}
.cards{display:flex;gap:10px;flex-wrap:wrap;margin-bottom:10px}
.card{background:#fff;border:1px solid #dde1e6;border-radius:6px;padding:8px 12px;min-width:90px}
.card b{display:block;font-size:20px}
table{border-collapse:collapse;background:#fff}
th,td{border:1px solid #dde1e6;padding:4px 8px;text-align:left;vertical-align:middle}
#confusion td{text-align:right}
.controls{display:flex;gap:12px;flex-wrap:wrap;align-items:center;margin:12px 0}
#rows{width:100%}
#rows img{display:block;max-width:160px;max-height:160px;background:#000}
.bar{display:flex;align-items:center;gap:6px;font-size:12px}
.bar span.t{width:104px;white-space:nowrap}
.bar span.b{display:inline-block;height:10px;background:#3b78c4;border-radius:2px}
.status-failed{color:#a3241b;font-weight:600}
.status-out_of_scope{color:#8a5a00;font-weight:600}
.status-classified{color:#1d6b34;font-weight:600}
.path{word-break:break-all;max-width:360px;font-family:ui-monospace,monospace;font-size:12px}
.none{color:#8b949e}
</style></head>
<body>
<header><h1>xray-infer results</h1><p id="meta"></p></header>
<div class="warn">Research software, not a diagnostic device: labels are not findings.</div>
<div class="warn" id="interrupted" hidden></div>
<main>
<div class="cards" id="cards"></div>
<div id="confusion-box"></div>
<div class="controls">
<label>Status <select id="status"><option value="">all</option><option>classified</option>
<option value="out_of_scope">out of scope</option><option>failed</option></select></label>
<label>Label <select id="label"><option value="">all</option></select></label>
<label>Sort <select id="sort"><option value="input">input order</option>
<option value="confidence-desc">confidence, highest first</option>
<option value="confidence-asc">confidence, lowest first</option></select></label>
<label>Path contains <input id="search" type="search"></label>
<label><input id="heat" type="checkbox"> heatmaps</label>
<span id="shown"></span>
</div>
<table id="rows"><thead><tr><th>#</th><th>scan</th><th>input</th><th>status</th><th>label</th>
<th>probabilities</th><th>reason</th></tr></thead><tbody></tbody></table>
</main>
<script id="data" type="application/json">__DATA__</script>
<script>
"use strict";
const DATA = JSON.parse(document.getElementById("data").textContent);
const $ = (id) => document.getElementById(id);
function el(tag, props, ...kids) {
  const e = document.createElement(tag);
  Object.assign(e, props || {});
  for (const k of kids) e.append(k);
  return e;
}
const m = DATA.meta, s = DATA.summary;
$("meta").textContent = `model ${m.model_version} (${m.precision}), xray-infer ${m.package}, ` +
  `written ${m.written}; command: ${m.command}`;
if (m.interrupted) {
  $("interrupted").hidden = false;
  $("interrupted").textContent = `This run stopped early (${m.interrupted}): the page shows ` +
    "the rows written until then; the inputs after them have no row.";
}
const cards = [["inputs", s.n], ...Object.entries(s.status).map(([k, v]) => [k.replace(/_/g, " "), v]),
  ...Object.entries(s.labels).map(([k, v]) => ["labelled " + k, v])];
for (const [k, v] of cards) $("cards").append(el("div", {className: "card"}, el("b", {textContent: v}), k));
if (s.confusion) {
  const cols = Object.keys(Object.values(s.confusion)[0]);
  const t = el("table", {id: "confusion"});
  t.append(el("caption", {textContent: `${s.with_truth} of ${s.n} inputs carry their truth in ` +
    "their file names (the published dataset's scheme): truth (rows) against the result (columns)"}));
  t.append(el("tr", {}, el("th", {textContent: "truth \\u2193"}), ...cols.map(c => el("th", {textContent: c.replace(/_/g, " ")}))));
  for (const [truth, row] of Object.entries(s.confusion))
    t.append(el("tr", {}, el("th", {textContent: truth}), ...cols.map(c => el("td", {textContent: row[c]}))));
  $("confusion-box").append(t);
}
for (const c of m.classes) $("label").append(el("option", {textContent: c}));
const confidence = (r) => r.p ? Math.max(...Object.values(r.p)) : -1;
function cells(r) {
  const img = (src) => src ? el("img", {src, loading: "lazy", alt: "scan " + r.i, width: 160}) :
    el("span", {className: "none", textContent: "no picture"});
  const pic = el("td", {className: "pic"}, img(r.thumb));
  pic.dataset.thumb = r.thumb || ""; pic.dataset.heat = r.heat || "";
  const path = el("td", {className: "path", textContent: r.path});
  if (r.overlay) path.append(el("br"), el("a", {href: r.overlay, textContent: "full overlay"}));
  const probs = el("td");
  if (r.p) for (const [k, v] of Object.entries(r.p))
    probs.append(el("div", {className: "bar"}, el("span", {className: "t", textContent: `${k} ${v.toFixed(2)}`}),
      el("span", {className: "b", style: `width:${Math.round(v * 120)}px`})));
  const tr = el("tr", {}, el("td", {textContent: r.i + 1}), pic, path,
    el("td", {className: "status-" + r.status, textContent: r.status.replace(/_/g, " ")}),
    el("td", {textContent: r.label || ""}), probs, el("td", {textContent: r.reason || ""}));
  tr.dataset.status = r.status; tr.dataset.i = r.i; tr.dataset.confidence = confidence(r);
  return tr;
}
const ROWS = DATA.rows.map((r) => ({r, tr: cells(r)}));
function apply() {
  const status = $("status").value, label = $("label").value, sort = $("sort").value;
  const q = $("search").value.toLowerCase(), heat = $("heat").checked;
  let shown = ROWS.filter(({r}) => (!status || r.status === status) && (!label || r.label === label)
    && (!q || r.path.toLowerCase().includes(q)));
  if (sort !== "input") shown = shown.slice().sort((a, b) => sort === "confidence-desc" ?
    confidence(b.r) - confidence(a.r) || a.r.i - b.r.i : confidence(a.r) - confidence(b.r) || a.r.i - b.r.i);
  for (const {tr} of shown) {
    const pic = tr.querySelector("td.pic img");
    const want = heat && tr.querySelector("td.pic").dataset.heat || tr.querySelector("td.pic").dataset.thumb;
    if (pic && want && pic.getAttribute("src") !== want) pic.src = want;
  }
  const body = document.querySelector("#rows tbody");
  body.replaceChildren(...shown.map(({tr}) => tr));
  if (!shown.length) body.append(el("tr", {id: "no-rows"}, el("td", {colSpan: 7, className: "none",
    textContent: ROWS.length ? "No input matches these filters." : "This run wrote no rows."})));
  $("shown").textContent = `${shown.length} of ${ROWS.length} shown`;
  const params = new URLSearchParams();
  if (status) params.set("status", status);
  if (label) params.set("label", label);
  if (sort !== "input") params.set("sort", sort);
  if (q) params.set("q", q);
  if (heat) params.set("heat", "1");
  history.replaceState(null, "", params.toString() ? "#" + params : location.pathname);
}
// The view can be linked: #status=failed&label=viral&sort=confidence-desc&q=text&heat=1
const initial = new URLSearchParams(location.hash.slice(1));
$("status").value = initial.get("status") || "";
$("label").value = initial.get("label") || "";
$("sort").value = initial.get("sort") || "input";
$("search").value = initial.get("q") || "";
$("heat").checked = initial.get("heat") === "1";
for (const id of ["status", "label", "sort", "search", "heat"]) $(id).addEventListener("input", apply);
apply();
</script>
</body></html>
"""
