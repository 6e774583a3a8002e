"""The results page (``classify --report``), rendered by a real browser: Debian's chromium,
headless, its DOM dumped after the page's script ran. The view is driven by the URL's
fragment (``#status=failed``), the same code path as the filter and sort controls."""
import csv
import re
import shutil
import subprocess

import numpy as np
import pytest

from helpers import SAMPLES, run_cli

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed "
                                                         "(tests/system-packages.sh)")
HOSTILE = "<img src=x onerror=document.title='pwned'>.jpeg"


def render(page, fragment=""):
    """(DOM after the script ran, the browser's console lines)."""
    r = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
                        "--enable-logging=stderr", "--v=0", "--virtual-time-budget=5000",
                        "--dump-dom", f"{page.as_uri()}{fragment}"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout, [line for line in r.stderr.splitlines() if ":CONSOLE" in line]


def rows(dom):
    return re.findall(r'<tr data-status="([a-z_]+)" data-i="(\d+)" data-confidence="([-\d.e]+)"',
                      dom)


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """A folder of good scans, a truncated one, an image the model was not made for and a
    file named to inject markup, classified with heatmaps and a report."""
    import cv2
    root = tmp_path_factory.mktemp("report")
    scans = root / "scans"
    scans.mkdir()
    for p in SAMPLES:
        shutil.copy(p, scans / p.name)
    (scans / "cut.jpeg").write_bytes(SAMPLES[0].read_bytes()[:3000])
    cv2.imwrite(str(scans / "noise.png"),
                np.random.default_rng(0).integers(0, 256, (400, 400), dtype=np.uint8))
    shutil.copy(SAMPLES[2], scans / HOSTILE)
    out, page = root / "rows.csv", root / "report.html"
    r = run_cli("classify", scans, "-o", out, "--report", page, "--heatmaps", root / "heat")
    assert r.returncode == 1, r.stderr  # the truncated scan failed
    with open(out, newline="") as f:
        return page, list(csv.DictReader(f))


def test_one_row_per_input_with_its_status_and_no_console_errors(mixed):
    page, table = mixed
    dom, console = render(page)
    shown = rows(dom)
    assert [s for s, _, _ in shown] == [row["status"] for row in table]
    assert len(shown) == 9 and f">{len(table)} of {len(table)} shown<" in dom
    assert {s for s, _, _ in shown} == {"classified", "failed", "out_of_scope"}
    assert console == []  # no script error, nothing the CSP refused
    assert "truncated JPEG" in dom and "unlike the training radiographs" in dom
    # the hostile name is shown as text: its markup never ran and never became an element
    assert "<title>xray-infer results: 9 inputs</title>" in dom
    body = dom.split('<script id="data"')[0]
    assert "&lt;img src=x onerror=" in body
    assert not any("onerror" in tag for tag in re.findall(r"<img[^>]*>", body))
    # thumbnails for everything decodable, heatmaps for the classified, nothing from a network
    files = page.with_name("report_files")
    assert len(list(files.glob("*.heat.jpg"))) == 7 and len(list(files.glob("??????.jpg"))) == 8
    assert not re.search(r"(src|href)=\"https?:", page.read_text())
    assert "full overlay" in dom


def test_filters_and_sorting(mixed):
    page, table = mixed
    dom, _ = render(page, "#status=failed")
    assert [s for s, _, _ in rows(dom)] == ["failed"] and ">1 of 9 shown<" in dom
    dom, _ = render(page, "#status=out_of_scope")
    assert [s for s, _, _ in rows(dom)] == ["out_of_scope"]
    viral = [row for row in table if row["label"] == "viral"]
    dom, _ = render(page, "#label=viral")
    assert len(rows(dom)) == len(viral) >= 1
    dom, _ = render(page, "#sort=confidence-desc")
    confidence = [float(c) for _, _, c in rows(dom)]
    assert confidence == sorted(confidence, reverse=True) and len(confidence) == 9
    dom, _ = render(page, "#sort=confidence-asc&status=classified")
    confidence = [float(c) for _, _, c in rows(dom)]
    assert confidence == sorted(confidence) and len(confidence) == 7
    dom, _ = render(page, "#q=bacteria")
    assert len(rows(dom)) == sum("bacteria" in row["path"] for row in table)
    dom, _ = render(page, "#q=no-such-input")  # a filter nothing matches says so
    assert rows(dom) == [] and ">0 of 9 shown<" in dom and "No input matches these filters." in dom


def test_summary_and_confusion_table_from_the_file_names(mixed):
    page, table = mixed
    dom, _ = render(page)
    # the six samples keep the dataset's naming; the others carry no truth
    assert "6 of 9 inputs carry their truth" in dom
    table_html = re.search(r'<table id="confusion">.*?</table>', dom, re.S).group(0)
    assert table_html.count("<tr>") == 4  # header + normal, bacterial, viral
    from xray_infer.model import load_model
    version = load_model()[1].model_version  # the bundled model's, whichever is bundled
    assert f"model {version}" in dom and "xray-infer classify" in dom


def test_thousands_of_rows_stay_usable(tmp_path):
    from xray_infer import Classifier
    from xray_infer.classifier import Result
    from xray_infer.cli.results_page import ResultsPage
    clf = Classifier(scope=False)
    page = ResultsPage(tmp_path / "big.html", clf.spec, clf.variant)
    rng = np.random.default_rng(0)
    for i in range(3000):
        p = rng.dirichlet([1, 1, 1])
        if i % 10 == 0:
            page.add(Result(f"missing/{i}.jpeg", error="no such file"))
        else:  # classified rows whose files are gone: rows without thumbnails
            page.add(Result(f"gone/{i}.jpeg", label=clf.class_names[int(p.argmax())],
                            probabilities=dict(zip(clf.class_names, map(float, p)))))
    page.close()
    dom, console = render(tmp_path / "big.html", "#status=failed")
    assert ">300 of 3000 shown<" in dom and console == []
    assert page.failed_pictures == 2700
