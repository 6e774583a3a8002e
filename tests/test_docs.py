"""The README and the docs pages: every relative link resolves (file and heading), and the
README stays short enough to read in ten minutes."""
import re

import pytest

from helpers import ROOT

PAGES = sorted([ROOT / "README.md", ROOT / "CHANGELOG.md", *(ROOT / "docs").rglob("*.md")])
LINK = re.compile(r"\]\(([^)\s]+)\)")


def anchors(page):
    """GitHub's heading anchors of a Markdown page."""
    out = set()
    in_code = False
    for line in page.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            in_code = not in_code
        if in_code or not line.startswith("#"):
            continue
        text = line.lstrip("#").strip().lower()
        text = re.sub(r"[^\w\- ]", "", text)
        out.add(text.replace(" ", "-"))
    return out


def links(page):
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
    return [m.group(1) for m in LINK.finditer(text)]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page):
    broken = []
    for target in links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target}: no such file")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{target}: no heading #{anchor} in {file.name}")
    assert not broken, broken


def test_the_links_are_found():
    assert len(links(ROOT / "README.md")) >= 20  # the check above reads real links


def test_the_readme_is_short():
    assert len((ROOT / "README.md").read_text(encoding="utf-8").splitlines()) <= 250


# Figures quoted in the pages: each from its one record


def _bench(name):
    import json
    return json.loads((ROOT / "docs" / "bench" / name).read_text())


def _accuracy_cells(r):
    """A README accuracy-table row's cells after the variant, from a benchmark row."""
    lo, hi = r["accuracy_3class_ci"]
    blo, bhi = r["accuracy_binary_ci"]
    return (f"| {r['labelled']} | **{r['accuracy_3class']:.3f}** ({lo:.3f}-{hi:.3f}) | "
            f"{r['accuracy_binary']:.3f} ({blo:.3f}-{bhi:.3f}) | {r['sensitivity']:.3f} | "
            f"{r['specificity']:.3f} | {r['auc_binary']:.3f} | {r['refused']} |")


def quoted_figures():
    """(page, text it must hold), each text made from the record that holds the figure."""
    acc = _bench("accuracy.json")["rows"]
    v2 = _bench("accuracy-2.0.0.json")["rows"]["float32"]
    f32 = acc["float32"]
    yield "README.md", _accuracy_cells(f32)
    yield "README.md", _accuracy_cells(acc["int8"])
    yield "README.md", _accuracy_cells(acc["float16"])
    yield "README.md", (f"{f32['normals_called_pneumonia']} of the {f32['normals']} labelled "
                        f"normal scans are called pneumonia")
    yield "README.md", f"(float32 {v2['accuracy_3class']:.3f},"
    yield "CHANGELOG.md", (f"3-class {f32['accuracy_3class']:.3f} against "
                           f"{v2['accuracy_3class']:.3f}; normal vs pneumonia "
                           f"{f32['accuracy_binary']:.3f} against {v2['accuracy_binary']:.3f}")
    maps = _bench("heatmaps.json")["rows"]
    default, full = maps["overlays (default size)"], maps["overlays (full size)"]
    yield "docs/cli.md", (f"{default['cost_vs_plain']:.2f}x the plain run's time and "
                          f"{default['bytes_written'] / 2 ** 20:.0f} MiB of PNGs at the default "
                          f"size, {full['cost_vs_plain']:.2f}x and "
                          f"{full['bytes_written'] / 2 ** 20:.0f} MiB at full size")
    from xray_infer.model import load_model
    spec = load_model(providers=["CPUExecutionProvider"], precision="float32")[1]
    yield "docs/scope.md", (f"({spec.scope['threshold']:,.1f} for {spec.model_version}, "
                            f"`xray-infer info`)")


def test_the_figures_the_pages_quote_are_those_their_records_hold():
    missing = []
    for page, text in quoted_figures():
        flat = " ".join((ROOT / page).read_text(encoding="utf-8").split())
        if " ".join(text.split()) not in flat:
            missing.append(f"{page}: {text}")
    assert not missing, missing
