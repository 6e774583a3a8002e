"""A corpus of broken and unusual files through the command line: every file gets a row with a
prediction or a specific error, the exit status reports the failures, nothing crashes."""
import json
from pathlib import Path

from corpus.make_corpus import EXPECTED, make
from helpers import run_cli

SCAN = "IM-0001-0001.jpeg"  # a shipped sample


def test_corpus_through_cli(tmp_path, samples):
    corpus = make(tmp_path / "corpus", samples / SCAN)
    out = tmp_path / "out.jsonl"
    # float32: re-encodings of one scan must agree to 1e-3, which the int8 variant's rounding
    # of activations does not promise (it agrees with float32 to 0.01 here)
    p = run_cli("classify", corpus, "-o", out, "--precision", "float32")
    assert p.returncode == 1, p.stderr
    rows = {Path(r["path"]).name: r for r in map(json.loads, out.read_text().splitlines())}
    assert sorted(rows) == sorted(EXPECTED)
    for name, expected in EXPECTED.items():
        r = rows[name]
        if expected is True:
            assert r["error"] is None and r["label"], (name, r)
        else:
            assert r["label"] is None and expected in r["error"], (name, r)
    n_bad = sum(v is not True for v in EXPECTED.values())
    assert f"{n_bad} failed" in p.stderr
    # The same scan in every lossless re-encoding gets the same prediction.
    same = [rows[n]["probabilities"] for n in ("gray16.png", "rgb.png", "rgba.png", "gray.tiff",
                                               "gray.bmp", "upper-case.JPEG", "padded.jpeg")]
    for probs in same[1:]:
        assert max(abs(probs[k] - same[0][k]) for k in probs) < 1e-3
