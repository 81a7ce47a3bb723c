"""The interpretation workflow over real HTTP with the real model: the
model's predictions (held against Python torch's argmax, committed in
tests/fixtures/fmnist_cnn_workflow.json by scripts/make_workflow_fixtures.py),
the confusion matrix, filters on predicted classes and misclassified inputs
(against brute force here), class names, CSV answers, and the replies held
against the OpenAPI document's schemas."""

import csv
import io
import json
import os
import random
import sys

sys.path.insert(0, os.path.dirname(__file__))
import harness as H  # noqa: E402

D = None
DOC = None
N = 10000
FIX = json.load(open(os.path.join(H.ROOT, "tests", "fixtures", "fmnist_cnn_workflow.json")))
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
           "Ankle boot"]
RNG = random.Random(1701)


def q(kind, body, want=(200,)):
    b = {"model": "cnn", "dataset": "fmnist"}
    b.update(body)
    return D.ok("POST", "/v1/query/" + kind, b, want=want)


def all_inputs(extra=""):
    out, off = [], 0
    while True:
        page = D.ok("GET", "/v1/datasets/fmnist/inputs?limit=1000&offset=%d%s" % (off, extra))
        H.check_reply(DOC, "GET", "/v1/datasets/{dataset}/inputs", 200, page)
        out += page["inputs"]
        off += 1000
        if off >= page["total"]:
            return out, page["total"]


def test_start():
    global D, DOC
    D = H.Daemon().start()
    D.setup_demo()
    DOC = D.ok("GET", "/v1/openapi.json")
    H.check_reply(DOC, "GET", "/v1/datasets/{dataset}", 200, D.ok("GET", "/v1/datasets/fmnist"))
    H.check_reply(DOC, "GET", "/v1/models/{model}", 200, D.ok("GET", "/v1/models/cnn"))


def test_filters_on_predictions_need_them_first():
    body = {"layer": "fc1", "neurons": [1, 2], "k": 5, "filter": {"misclassified": True}}
    H.expect_error(D.call("POST", "/v1/query/topk", dict(body, model="cnn", dataset="fmnist")), 409,
                   "predictions_missing")
    H.expect_error(D.call("POST", "/v1/query/topk", dict(body, model="cnn", dataset="fmnist",
                                                         filter={"predicted": [3]})), 409, "predictions_missing")
    H.expect_error(D.call("GET", "/v1/datasets/fmnist/inputs?model=cnn&misclassified=true"), 409,
                   "predictions_missing")
    H.expect_error(D.call("GET", "/v1/predictions/cnn/fmnist"), 409, "predictions_missing")
    H.expect_error(D.call("POST", "/v1/predictions", {"model": "nope", "dataset": "fmnist"}), 404)
    H.expect_error(D.call("POST", "/v1/predictions", {"model": "cnn", "dataset": "fmnist", "layer": "nope"}), 404)
    H.expect_error(D.call("POST", "/v1/predictions", {"model": "cnn"}), 400, "missing_field")
    assert D.ok("GET", "/v1/predictions")["predictions"] == []


def test_predictions_equal_python_argmax():
    r = D.ok("POST", "/v1/predictions", {"model": "cnn", "dataset": "fmnist"}, want=(202,))
    H.check_reply(DOC, "POST", "/v1/predictions", 202, r)
    assert r["reused"] is False and r["layer"] == "logits"
    job = D.wait_job(r["job"])
    assert job["state"] == "done" and job["kind"] == "predictions" and job["done"] == job["total"] == N, job
    again = D.ok("POST", "/v1/predictions", {"model": "cnn", "dataset": "fmnist"}, want=(200,))
    assert again["reused"] is True and again["state"] == "ready"
    p = D.ok("GET", "/v1/predictions/cnn/fmnist")
    H.check_reply(DOC, "GET", "/v1/predictions/{model}/{dataset}", 200, p)
    inputs, total = all_inputs("&model=cnn")
    assert total == N and [x["id"] for x in inputs] == list(range(N))
    want = FIX["predicted"]
    skip = set(FIX["near_ties"])
    diff = [x["id"] for x in inputs if x["id"] not in skip and x["predicted"] != want[x["id"]]]
    assert not diff, "predictions differ from Python's argmax at %s" % diff[:10]
    # accuracy and the confusion matrix, recounted here
    labels = [x["label"] for x in inputs]
    correct = sum(1 for x in inputs if x["label"] == x["predicted"])
    assert abs(p["accuracy"] - correct / N) < 1e-12 and 0.8 < p["accuracy"] < 1, p["accuracy"]
    conf = [[0] * 10 for _ in range(10)]
    for x in inputs:
        conf[x["label"]][x["predicted"]] += 1
    assert p["confusion"] == conf and p["confusion_outside"] == 0
    assert sum(map(sum, p["confusion"])) == N and len(labels) == N
    lst = D.ok("GET", "/v1/predictions")["predictions"]
    assert [(x["model"], x["dataset"], x["state"]) for x in lst] == [("cnn", "fmnist", "ready")]


def test_listing_filters_equal_brute_force():
    inputs, _ = all_inputs("&model=cnn")
    mis = [x["id"] for x in inputs if x["label"] != x["predicted"]]
    got, total = all_inputs("&model=cnn&misclassified=true")
    assert [x["id"] for x in got] == mis and total == len(mis) > 0
    for cls in (0, 6):
        got, total = all_inputs("&model=cnn&predicted=%d" % cls)
        assert [x["id"] for x in got] == [x["id"] for x in inputs if x["predicted"] == cls]
        got, _ = all_inputs("&model=cnn&predicted=%d&label=%d" % (cls, 2))
        assert [x["id"] for x in got] == [x["id"] for x in inputs if x["predicted"] == cls and x["label"] == 2]
    H.expect_error(D.call("GET", "/v1/datasets/fmnist/inputs?predicted=3"), 422)
    H.expect_error(D.call("GET", "/v1/datasets/fmnist/inputs?model=cnn&misclassified=maybe"), 422)


def test_queries_filtered_by_predictions_equal_scan_and_brute_force():
    inputs, _ = all_inputs("&model=cnn")
    by_id = {x["id"]: x for x in inputs}
    r = D.ok("POST", "/v1/indexes", {"model": "cnn", "dataset": "fmnist", "layer": "fc1"}, want=(202, 200))
    assert D.wait_job(r["job"])["state"] == "done"
    filters = [{"misclassified": True}, {"predicted": [2, 4, 6]}, {"predicted": [6], "labels": [0, 2]},
               {"misclassified": True, "labels": [6]}, {"misclassified": True, "ids": list(range(0, N, 7))}]
    for f in filters:
        def ok(i, f=f):
            x = by_id[i]
            return ((not f.get("misclassified") or x["label"] != x["predicted"]) and
                    ("predicted" not in f or x["predicted"] in f["predicted"]) and
                    ("labels" not in f or x["label"] in f["labels"]) and
                    ("ids" not in f or i in f["ids"]))
        allowed = {i for i in range(N) if ok(i)}
        assert allowed
        for kind in ("topk", "knn"):
            body = {"layer": "fc1", "neurons": sorted(RNG.sample(range(64), 4)), "k": 20, "filter": f}
            if kind == "knn":
                body["target"] = RNG.randrange(N)
            ref = q(kind, dict(body, method="scan"))
            H.check_reply(DOC, "POST", "/v1/query/" + kind, 200, ref)
            assert ref["results"] and {r["input"] for r in ref["results"]} <= allowed
            assert len(ref["results"]) == min(20, len(allowed) - (1 if kind == "knn" and body["target"] in allowed
                                                                   else 0))
            for r in ref["results"]:
                assert r["predicted"] == by_id[r["input"]]["predicted"] and r["label"] == by_id[r["input"]]["label"]
            for method in ("bounds", "nta"):
                assert q(kind, dict(body, method=method))["results"] == ref["results"], (f, kind, method)


def test_class_names():
    # wrong lengths change nothing
    H.expect_error(D.call("PUT", "/v1/datasets/fmnist/classes", {"classes": CLASSES[:9]}), 422, "invalid_classes")
    H.expect_error(D.call("PUT", "/v1/datasets/fmnist/classes", {"classes": []}), 422)
    H.expect_error(D.call("PUT", "/v1/datasets/fmnist/classes", {"classes": [1, 2]}), 400)
    H.expect_error(D.call("PUT", "/v1/datasets/fmnist/classes", {"names": CLASSES}), 400)
    H.expect_error(D.call("PUT", "/v1/datasets/nope/classes", {"classes": CLASSES}), 404)
    assert "classes" not in D.ok("GET", "/v1/datasets/fmnist")
    ds = D.ok("PUT", "/v1/datasets/fmnist/classes", {"classes": CLASSES})
    H.check_reply(DOC, "PUT", "/v1/datasets/{dataset}/classes", 200, ds)
    assert ds["classes"] == CLASSES and D.ok("GET", "/v1/datasets/fmnist")["classes"] == CLASSES
    page = D.ok("GET", "/v1/datasets/fmnist/inputs?model=cnn&limit=50")
    for x in page["inputs"]:
        assert x["class"] == CLASSES[x["label"]] and x["predicted_class"] == CLASSES[x["predicted"]]
    res = q("topk", {"layer": "fc1", "neurons": [5], "k": 10})["results"]
    assert all(r["class"] == CLASSES[r["label"]] and r["predicted_class"] == CLASSES[r["predicted"]] for r in res)
    assert D.ok("GET", "/v1/predictions/cnn/fmnist")["classes"] == CLASSES
    one = D.ok("GET", "/v1/datasets/fmnist/inputs/7")
    H.check_reply(DOC, "GET", "/v1/datasets/{dataset}/inputs/{input}", 200, one)
    # given on import, and checked against the labels there
    body = {"name": "fm2", "path": H.TEST_IMAGES, "labels_path": H.TEST_LABELS, "format": "idx",
            "classes": CLASSES}
    body.update(H.NORM)
    assert D.ok("POST", "/v1/datasets", body)["classes"] == CLASSES
    H.expect_error(D.call("POST", "/v1/datasets", dict(body, name="fm3", classes=CLASSES[:3])), 422,
                   "invalid_classes")
    H.expect_error(D.call("GET", "/v1/datasets/fm3"), 404)
    D.ok("DELETE", "/v1/datasets/fm2")


def test_csv_answers():
    body = {"layer": "fc1", "neurons": [5, 9], "k": 7, "target": 11, "filter": {"misclassified": True}}
    js = q("knn", body)["results"]
    st, raw = D.call("POST", "/v1/query/knn?format=csv", dict(body, model="cnn", dataset="fmnist"))
    assert st == 200 and isinstance(raw, bytes), raw
    rows = list(csv.DictReader(io.StringIO(raw.decode())))
    assert [int(r["input"]) for r in rows] == [r["input"] for r in js]
    assert [int(r["rank"]) for r in rows] == list(range(1, 8))
    for r, j in zip(rows, js):
        assert float(r["distance"]) == j["distance"] and r["class"] == j["class"]  # "T-shirt/top" etc.
        assert int(r["predicted"]) == j["predicted"]
    st, raw = D.call("GET", "/v1/datasets/fmnist/inputs?model=cnn&limit=5&offset=3", headers={"Accept": "text/csv"})
    rows = list(csv.DictReader(io.StringIO(raw.decode())))
    assert st == 200 and [int(r["id"]) for r in rows] == [3, 4, 5, 6, 7] and rows[0]["class"] in CLASSES
    # errors stay JSON
    H.expect_error(D.call("POST", "/v1/query/knn?format=csv", dict(body, model="cnn", dataset="fmnist", k=0)), 422)


def attribution_qs(c):
    qs = "model=%s&layer=%s&neurons=%s&agg=%s&method=%s" % (c.get("model", "cnn"), c["layer"],
                                                            ",".join(map(str, c["neurons"])), c["agg"], c["method"])
    if "weights" in c:
        qs += "&weights=" + ",".join(map(str, c["weights"]))
    for k in ("samples", "noise", "seed", "cam_layer"):
        if k in c:
            qs += "&%s=%s" % (k, c[k])
    return qs


def test_attributions_equal_python_autograd():
    """Gradients, SmoothGrad, Grad-CAM and channel maps against torch's
    autograd in Python on the same model and input (the fixture). Measured
    agreement ~1e-9 of the map's largest value (the batch a forward runs
    in changes the last bits); the test allows 1e-5 of it."""
    for c in FIX["attributions"]:
        r = D.ok("GET", "/v1/datasets/fmnist/inputs/%d/attribution?%s" % (c["input"], attribution_qs(c)))
        H.check_reply(DOC, "GET", "/v1/datasets/{dataset}/inputs/{input}/attribution", 200, r)
        assert r["shape"] == c["shape"] and r["method"] == c["method"] and r["input"] == c["input"], (c, r["shape"])
        top = max(abs(v) for v in c["values"])
        assert top > 0, "a fixture case of an all-zero map tests nothing: %s" % c
        err = max(abs(a - b) for a, b in zip(r["values"], c["values"]))
        assert err <= 1e-5 * top, (c["method"], c["layer"], err, top)
        assert r["min"] == min(r["values"]) and r["max"] == max(r["values"])
        if c["method"] == "gradcam":
            assert r["cam_layer"] == c["cam_layer"] and min(r["values"]) >= 0
        if c.get("samples"):
            assert r["samples"] == c["samples"] and r["sigma"] > 0
    # SmoothGrad is reproducible by its seed and changes with it
    c = [x for x in FIX["attributions"] if x.get("samples")][0]
    a = D.ok("GET", "/v1/datasets/fmnist/inputs/%d/attribution?%s" % (c["input"], attribution_qs(c)))
    b = D.ok("GET", "/v1/datasets/fmnist/inputs/%d/attribution?%s" % (c["input"], attribution_qs(dict(c, seed=7))))
    assert a["values"] == D.ok("GET", "/v1/datasets/fmnist/inputs/%d/attribution?%s" % (
        c["input"], attribution_qs(c)))["values"] and a["values"] != b["values"]
    # the target is the group's aggregate, as a top-k scores it
    g = {"layer": "fc1", "neurons": [3, 17, 40], "agg": "sum", "method": "gradient"}
    r = D.ok("GET", "/v1/datasets/fmnist/inputs/7/attribution?" + attribution_qs(g))
    acts = D.ok("GET", "/v1/datasets/fmnist/inputs/7/activations?model=cnn&layer=fc1&neurons=3,17,40")
    assert abs(r["target"] - sum(x["value"] for x in acts)) < 1e-5


def png_size(raw):
    assert raw[:8] == b"\x89PNG\r\n\x1a\n" and raw[12:16] == b"IHDR", raw[:16]
    return int.from_bytes(raw[16:20], "big"), int.from_bytes(raw[20:24], "big"), raw[25]


def test_attribution_heatmaps():
    for c in FIX["attributions"]:
        st, raw = D.call("GET", "/v1/datasets/fmnist/inputs/%d/attribution.png?%s" % (c["input"], attribution_qs(c)))
        assert st == 200 and png_size(raw) == (112, 112, 2), (st, c)
    st, raw = D.call("GET", "/v1/datasets/fmnist/inputs/7/attribution.png?size=224&alpha=0.3&" +
                     attribution_qs(FIX["attributions"][0]))
    assert st == 200 and png_size(raw)[:2] == (224, 224)
    H.expect_error(D.call("GET", "/v1/datasets/fmnist/inputs/7/attribution.png?alpha=2&" +
                          attribution_qs(FIX["attributions"][0])), 422)


def test_bad_attributions_change_nothing():
    D.ok("POST", "/v1/models", {"name": "frozen", "path": os.path.join(H.ROOT, "tests", "fixtures",
                                                                       "nograd_model.pt")})
    base = {"layer": "fc1", "neurons": [3], "agg": "sum", "method": "gradient"}
    url = "/v1/datasets/fmnist/inputs/7/attribution?"
    ok = D.ok("GET", url + attribution_qs(dict(base, model="frozen", layer="fc")))
    assert ok["shape"] == [28, 28] and any(ok["values"])
    cases = [
        (dict(base, model="frozen", layer="frozen"), 422, "not_differentiable"),
        (dict(base, model="frozen", layer="fc", method="gradcam"), 422, "not_spatial"),
        (dict(base, method="channel"), 422, "not_spatial"),
        (dict(base, method="gradcam", layer="conv3", cam_layer="conv4"), 422, "invalid_cam_layer"),
        (dict(base, method="gradcam", cam_layer="fc1"), 422, "invalid_cam_layer"),
        (dict(base, method="gradcam", cam_layer="nope"), 404, "unknown_layer"),
        (dict(base, neurons=[64]), 422, "neuron_out_of_range"),
        (dict(base, layer="nope"), 404, "unknown_layer"),
        (dict(base, model="nope"), 404, None),
        (dict(base, method="saliency"), 422, None),
        (dict(base, agg="median"), 422, None),
        (dict(base, weights=[1, 2]), 422, "weights_mismatch"),
        (dict(base, agg="max", weights=[1]), 422, "conflicting_fields"),
        (dict(base, method="gradcam", samples=4), 422, "conflicting_fields"),
        (dict(base, samples=65), 422, None),
        (dict(base, noise=-1, samples=2), 422, None),
        (dict(base, method="channel", layer="conv3", cam_layer="conv2"), 422, "conflicting_fields"),
    ]
    for c, status, code in cases:
        H.expect_error(D.call("GET", url + attribution_qs(c)), status, code)
    H.expect_error(D.call("GET", "/v1/datasets/fmnist/inputs/7/attribution?model=cnn&layer=fc1"), 400,
                   "missing_field")
    H.expect_error(D.call("GET", "/v1/datasets/fmnist/inputs/10000/attribution?" + attribution_qs(base)), 404)
    H.expect_error(D.call("GET", "/v1/datasets/nope/inputs/1/attribution?" + attribution_qs(base)), 404)
    D.ok("DELETE", "/v1/models/frozen")
    assert D.ok("GET", "/v1/health")["status"] == "ok"


def test_deleting_predictions_and_the_model():
    H.check_reply(DOC, "DELETE", "/v1/predictions/{model}/{dataset}", 200,
                  D.ok("DELETE", "/v1/predictions/cnn/fmnist"))
    H.expect_error(D.call("DELETE", "/v1/predictions/cnn/fmnist"), 404)
    H.expect_error(D.call("GET", "/v1/datasets/fmnist/inputs?model=cnn&misclassified=1"), 409, "predictions_missing")
    r = D.ok("POST", "/v1/predictions", {"model": "cnn", "dataset": "fmnist"}, want=(202,))
    assert D.wait_job(r["job"])["state"] == "done"
    D.ok("DELETE", "/v1/models/cnn")
    assert D.ok("GET", "/v1/predictions")["predictions"] == []
    D.close()


if __name__ == "__main__":
    H.run(globals())
