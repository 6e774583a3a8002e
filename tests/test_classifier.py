"""classify()/Classifier with real ONNX Runtime sessions on real scans."""
import glob
import os
import re
import tracemalloc
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import xray_infer
from xray_infer import Classifier, Decoded, Encoded, ModelError, ProviderError, classify
from xray_infer.decode import read_image
from xray_infer.preprocess import reference_preprocess
from xray_infer.spec import CPU_BATCH_SIZE, METADATA_KEY, ModelSpec
from threads import run_threads  # tests/threads.py


@pytest.fixture(scope="module")
def clf():
    # float32: these tests hold the pipeline to the reference definition and to the metrics
    # recorded at export; the int8 variant has its own parity tests (test_variants.py)
    return Classifier(providers=["CPUExecutionProvider"], precision="float32")


@pytest.fixture(scope="module")
def scans(data):
    return sorted(glob.glob(str(data / "chest_xray/test/*/*.jpeg")))[::40]


def _reference_probs(clf, path):
    """Straightforward path: reference preprocessing + a plain InferenceSession.run."""
    img = read_image(path)
    x = reference_preprocess(img.pixels, size=clf.spec.input_size, mean=clf.spec.mean,
                             std=clf.spec.std, maxval=img.maxval)
    sess = ort.InferenceSession(str(clf.model_path), providers=["CPUExecutionProvider"])
    logits = sess.run(None, {clf.spec.input_name: x[None, None]})[0][0].astype(np.float64)
    e = np.exp(logits - logits.max())
    return e / e.sum()


def test_bundled_model_carries_its_spec(clf):
    s = clf.spec
    assert s.class_names == ("normal", "bacterial", "viral")
    assert s.input_size > 0 and s.std > 0
    assert {"val", "test"} <= set(s.metrics)


def test_results_in_order_with_probabilities(clf, scans):
    results = clf.classify(scans, batch_size=3)
    assert [r.source for r in results] == scans
    for r in results:
        assert r.ok and r.label in clf.class_names
        assert set(r.probabilities) == set(clf.class_names)
        assert abs(sum(r.probabilities.values()) - 1) < 1e-6
        assert r.label == max(r.probabilities, key=r.probabilities.get)


def test_matches_reference_path(clf, scans):
    for r in clf.classify(scans[:6]):
        ref = _reference_probs(clf, r.source)
        got = np.array([r.probabilities[n] for n in clf.class_names])
        assert np.abs(got - ref).max() < 1e-4
        assert clf.class_names[int(ref.argmax())] == r.label


def test_one_shot_classify_and_arrays(clf, scans):
    by_path = classify(scans[:2], providers=["CPUExecutionProvider"], precision="float32")
    img = read_image(scans[0])
    arrays = clf.classify([img.pixels, Decoded(img.pixels, img.maxval),
                           img.pixels.astype(np.float32) / 255])
    assert [r.source for r in arrays] == ["<array 0>", "<array 1>", "<array 2>"]
    for r in arrays:
        assert r.label == by_path[0].label
        assert abs(r.probabilities["normal"] - by_path[0].probabilities["normal"]) < 1e-4
    single = clf.classify(img.pixels)
    assert len(single) == 1 and single[0].label == by_path[0].label


def test_bad_files_mixed_into_a_batch(clf, scans, tmp_path):
    empty = tmp_path / "empty.jpeg"
    empty.write_bytes(b"")
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(os.urandom(500))
    inputs = [scans[0], str(empty), scans[1], str(tmp_path / "missing.jpeg"), str(garbage),
              np.zeros((3, 3, 3), np.uint8), scans[2], 42]
    results = clf.classify(inputs, batch_size=3)
    assert len(results) == len(inputs)
    ok = [r.ok for r in results]
    assert ok == [True, False, True, False, False, False, True, False]
    assert "empty file" in results[1].error
    assert "no such file" in results[3].error
    assert "not a decodable image" in results[4].error
    assert "2-D" in results[5].error
    assert "unsupported input type" in results[7].error
    good = clf.classify([scans[0], scans[1], scans[2]])
    assert [r.label for r in good] == [results[i].label for i in (0, 2, 6)]


def test_padded_batches_keep_one_shape_and_the_same_results(clf, scans, tmp_path):
    # The CUDA path pads short batches (one input shape for cuDNN); here on the CPU session,
    # so that the slicing is checked where no GPU is: one shape seen, results unchanged.
    padded = Classifier(providers=["CPUExecutionProvider"], heatmaps=True)
    padded._pad = True
    shapes, run = [], padded.session.run
    padded.session.run = lambda names, feed: \
        shapes.append(feed[padded.spec.input_name].shape) or run(names, feed)
    inputs = scans[:5] + [str(tmp_path / "missing.jpeg")] + scans[5:9]
    got = padded.classify(inputs, batch_size=4)
    assert {s[0] for s in shapes} == {4} and len(shapes) == 3
    want = Classifier(providers=["CPUExecutionProvider"], heatmaps=True).classify(inputs,
                                                                                 batch_size=4)
    assert [r.error for r in got] == [r.error for r in want] and not got[5].ok
    for a, b in zip(got, want):
        if a.ok:
            assert a.label == b.label and np.array_equal(a.heatmap, b.heatmap)
            assert all(abs(a.probabilities[k] - b.probabilities[k]) < 1e-6 for k in a.probabilities)


def test_a_short_list_is_split_across_the_workers_with_the_same_results(clf, scans, tmp_path):
    """On the CPU each worker scores batches of its own: a list shorter than workers x batch
    is cut so that every worker gets a part, and the results do not depend on the split."""
    inputs = scans[:4] + [str(tmp_path / "missing.jpeg")] + scans[4:7]
    want = clf.classify(inputs, batch_size=1)
    for workers in (1, 2, 3):
        split = Classifier(providers=["CPUExecutionProvider"], precision="float32",
                           workers=workers)
        assert split.batch_size == CPU_BATCH_SIZE
        calls, run = [], split.session.run
        split.session.run = lambda names, feed: calls.append(len(feed["image"])) or run(names,
                                                                                      feed)
        got = split.classify(inputs)
        assert sorted(calls) == sorted({1: [7], 2: [3, 4], 3: [2, 2, 3]}[workers])
        assert [r.source for r in got] == inputs and [r.error for r in got] == [r.error for r in want]
        for a, b in zip(got, want):
            if a.ok:
                assert a.label == b.label
                assert all(abs(a.probabilities[k] - b.probabilities[k]) < 1e-5 for k in a.probabilities)


def test_all_bad_batch(clf, tmp_path):
    results = clf.classify([str(tmp_path / "a.jpeg"), str(tmp_path / "b.jpeg")])
    assert [r.ok for r in results] == [False, False]


def test_providers(scans):
    with pytest.raises(ProviderError, match="Available|available") as e:
        Classifier(providers=["NoSuchExecutionProvider"])
    assert "CPUExecutionProvider" in str(e.value)
    clf = Classifier(providers=["CPUExecutionProvider"], threads=1)
    assert clf.providers == ["CPUExecutionProvider"]


def test_model_without_metadata_is_rejected(tmp_path):
    m = onnx.load(str(xray_infer.DEFAULT_MODEL))
    del m.metadata_props[:]
    p = tmp_path / "bare.onnx"
    onnx.save(m, str(p))
    with pytest.raises(ModelError, match="not an xray_infer model"):
        Classifier(p)


def test_model_with_broken_metadata_is_rejected(tmp_path):
    m = onnx.load(str(xray_infer.DEFAULT_MODEL))
    spec = ModelSpec.from_metadata({p.key: p.value for p in m.metadata_props})
    del m.metadata_props[:]
    bad = dict(spec.to_metadata())
    bad[METADATA_KEY] = bad[METADATA_KEY].replace('"std"', '"sd"')
    for k, v in bad.items():
        m.metadata_props.add(key=k, value=v)
    p = tmp_path / "nostd.onnx"
    onnx.save(m, str(p))
    with pytest.raises(ModelError, match="lacks std"):
        Classifier(p)


def test_corrupted_or_foreign_model_files(tmp_path):
    data = xray_infer.DEFAULT_MODEL.read_bytes()
    p = tmp_path / "m.onnx"
    p.write_bytes(data[:1000] + b"\x00" * 64 + data[1064:])
    sha = (xray_infer.DEFAULT_MODEL.parent / "default.onnx.sha256").read_text()
    (tmp_path / "m.onnx.sha256").write_text(sha)
    with pytest.raises(ModelError, match="SHA-256"):
        Classifier(p)
    q = tmp_path / "foreign.onnx"
    q.write_bytes(b"definitely not protobuf")
    with pytest.raises(ModelError, match="not a loadable ONNX model"):
        Classifier(q)
    with pytest.raises(ModelError, match="not found"):
        Classifier(tmp_path / "absent.onnx")


@pytest.mark.slow
def test_generator_input_keeps_memory_bounded(clf, scans):
    """600 inputs from a generator: peak Python-side memory stays a few batches' worth."""
    n, size = 600, clf.spec.input_size
    img = read_image(scans[0]).pixels
    one_batch = 8 * size * size * 4

    def gen():
        for _ in range(n):
            yield img

    tracemalloc.start()
    count = 0
    for r in clf.iter_classify(gen(), batch_size=8):
        assert r.ok
        count += 1
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert count == n
    assert peak < 12 * one_batch, (peak, one_batch)  # unbatched would be n * size**2 * 4


def test_concurrent_use_matches_sequential(clf, scans):
    expected = [r.probabilities for r in clf.classify(scans)]
    out = run_threads(lambda k: [r.probabilities
                                 for r in clf.classify(scans, batch_size=2 + k)], 4)
    for k in range(4):
        for a, b in zip(out[k], expected):
            assert max(abs(a[c] - b[c]) for c in a) < 1e-5


@pytest.mark.parametrize("kw", [dict(batch_size=0), dict(batch_size=2.5), dict(threads=0),
                                dict(workers=-1), dict(batch_size=True)])
def test_invalid_counts(kw):
    with pytest.raises(ValueError, match=next(iter(kw))):
        Classifier(**kw)


def test_a_decoded_scan_is_one_input(clf, samples):
    d = read_image(samples / "IM-0001-0001.jpeg")
    results = clf.classify(d)
    assert len(results) == 1 and results[0].ok
    assert results[0].probabilities == clf.classify([d])[0].probabilities


def test_encoded_bytes_are_an_input(clf, samples):
    path = samples / "IM-0001-0001.jpeg"
    a, b = clf.classify([path.read_bytes(), str(path)])
    assert a.source == "<bytes 0>" and a.probabilities == b.probabilities
    one = clf.classify(bytearray(path.read_bytes()))  # a single input, not its bytes
    assert len(one) == 1 and one[0].probabilities == b.probabilities
    bad = clf.classify([b"not an image"])[0]
    assert "<bytes 0>" == bad.source and "not a decodable image" in bad.error


@pytest.mark.parametrize("pixels,maxval,reason", [
    (np.full((300, 300), 3e38, np.float32), None, r"outside the declared range \[0, 1\]"),
    (np.full((300, 300), 200.0, np.float32), None, "Decoded\\(pixels, 255.0\\)"),
    (np.full((300, 300), -0.1, np.float32), None, "outside the declared range"),
    (np.full((300, 300), np.nan, np.float32), None, "NaN or infinite"),
    (np.full((300, 300), 5000, np.uint16), 4095.0, r"outside the declared range \[0, 4095\]"),
    (np.zeros((1, 1), np.uint8), 255.0, "too small for a radiograph"),
    (np.zeros((4, 3000), np.uint8), 255.0, "too small for a radiograph"),
    (np.zeros((100, 400), np.uint8), 255.0, "not the shape of a chest film"),
])
def test_out_of_range_and_implausible_inputs_are_errors(clf, samples, pixels, maxval, reason):
    item = Decoded(pixels, maxval) if maxval is not None else pixels
    results = clf.classify([item, read_image(samples / "IM-0001-0001.jpeg").pixels])
    assert [r.ok for r in results] == [False, True]
    assert results[0].label is None and results[0].probabilities is None
    assert re.search(reason, results[0].error), results[0].error


def test_float_scan_in_declared_range_matches_its_8_bit_original(clf, samples):
    d = read_image(samples / "IM-0001-0001.jpeg")
    as_float = Decoded(d.pixels.astype(np.float32), 255.0)
    a, b = clf.classify([d, as_float])
    assert max(abs(a.probabilities[k] - b.probabilities[k]) for k in a.probabilities) < 1e-5


def test_no_warning_on_plain_cpu():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Classifier(providers=["CPUExecutionProvider"])


@pytest.mark.slow
def test_whole_test_split_matches_reference_and_recorded_accuracy(clf, data):
    """All 624 test images: classify() == reference preprocessing + plain session.run, and the
    accuracy equals the figure written into the model's metadata at export (scope off); with
    the scope gate on, what the gates keep of them is classified, with the same labels."""
    from trainer.dataset import scan_split
    records = scan_split(data / "chest_xray" / "test")
    paths = [r.path for r in records]
    results = Classifier(providers=["CPUExecutionProvider"], scope=False,
                         precision="float32").classify(paths, batch_size=64)
    gated = clf.classify(paths, batch_size=64)
    # the image gate keeps about 99.5% of them, the adult head the share its export recorded
    kept = clf.spec.adult_head.get("development", {}).get("test_kept", {}).get("share", 1.0)
    assert sum(r.ok for r in gated) >= (kept - 0.01) * len(records)
    assert all(g.label == r.label for g, r in zip(gated, results) if g.ok)
    s = clf.spec
    sess = ort.InferenceSession(str(clf.model_path), providers=["CPUExecutionProvider"])
    ref = []
    for r in records:
        img = read_image(r.path)
        ref.append(reference_preprocess(img.pixels, size=s.input_size, mean=s.mean, std=s.std,
                                        maxval=img.maxval))
    ref = np.stack(ref)[:, None]
    logits = np.concatenate([sess.run(None, {s.input_name: ref[i:i + 64]})[0]
                             for i in range(0, len(ref), 64)])
    ref_labels = [s.class_names[k] for k in logits.argmax(1)]
    assert [r.label for r in results] == ref_labels
    truth = [r.class_name for r in records]
    accuracy = np.mean([a == b for a, b in zip(ref_labels, truth)])
    assert accuracy == pytest.approx(s.metrics["test"]["accuracy"], abs=1e-9)
    assert s.metrics["test"]["n"] == len(records) == 624


def test_encoded_bytes_carry_their_name_and_the_file_checks(clf, samples, tmp_path):
    path = samples / "IM-0001-0001.jpeg"
    cut = tmp_path / "cut.jpeg"
    cut.write_bytes(path.read_bytes()[:2000])
    named = clf.classify([Encoded(path.read_bytes(), "s3://b/x.jpeg"),
                          Encoded(cut.read_bytes(), str(cut)), Encoded(b"", "e.jpeg")])
    files = clf.classify([str(path), str(cut)])
    assert [r.source for r in named] == ["s3://b/x.jpeg", str(cut), "e.jpeg"]
    assert named[0].probabilities == files[0].probabilities
    assert named[1].error == files[1].error and "truncated JPEG" in named[1].error
    assert named[2].error == "empty file (0 bytes)"
    assert len(clf.classify(Encoded(path.read_bytes(), "one"))) == 1  # a single input
