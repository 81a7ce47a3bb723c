"""The catalog and the API around it, over real HTTP: deletes and cancels
during builds that leave nothing of the deleted object in the store (checked
with tests/tools/store_tool and --stat, not only through the API), index
reuse, the input listing, the activations target, errors that list the valid
choices and stay valid UTF-8 whatever bytes the URL holds, one daemon per
data directory with --stat beside it, and the OpenAPI document against the
router. Each defect the review found has its regression test here."""

import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
import harness as H  # noqa: E402

D = None
N = 10000


def tool(*args):
    out = subprocess.run([os.path.join(H.ROOT, H.args().build, "tests", "store_tool")] + list(args),
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


def counts():
    return json.loads(tool(D.data, "counts"))


def stat_text():
    out = subprocess.run([os.path.join(H.ROOT, H.args().build, "deepeverestd"), "--data", D.data, "--stat"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


def build(layers, model="cnn", dataset="fmnist", want=(202,), **kw):
    body = {"model": model, "dataset": dataset, "layers": layers}
    body.update(kw)
    return D.ok("POST", "/v1/indexes", body, want=want)


def wait_running(job):
    t0 = time.time()
    while time.time() - t0 < 120:
        j = D.ok("GET", "/v1/jobs/%d" % job)
        if j["state"] != "queued" and (j["state"] != "running" or j["done"] > 0):
            return j
        time.sleep(0.02)
    raise AssertionError("job %d never ran" % job)


def test_start():
    global D
    # builds queue one at a time; a small build budget makes a conv2 build
    # spill and last long enough to be caught running
    D = H.Daemon(extra=["--max-builds", "1", "--build-memory-mb", "128"]).start()
    D.setup_demo()


def test_non_utf8_urls_answer_json_errors():
    # regression: a byte that is not UTF-8 in a path segment made the error
    # body unencodable (500 "out of memory")
    for path, status in (("/v1/models/%FF", 404), ("/nope%FF", 404), ("/v1/datasets/%C3%28", 404),
                         ("/v1/indexes/%FF%FE", 404), ("/v1/datasets/fmnist/inputs/%80", 404),
                         ("/v1/jobs/1%00", 404)):
        st, raw = D.call("GET", path, headers={"Accept": "application/json"})
        assert st == status, (path, st, raw)
        assert isinstance(raw, dict) and raw["error"]["message"], (path, raw)
    st, js = D.call("DELETE", "/v1/models/%E2%82")
    assert st == 404 and "error" in js, js


def test_errors_list_valid_choices():
    st, js = D.call("POST", "/v1/query/topk", {"model": "cnn", "dataset": "fmnist", "layer": "fc9",
                                               "neurons": [0], "k": 1})
    H.expect_error((st, js), 404, "unknown_layer")
    for layer in ("conv1", "pool2", "fc1", "logits"):
        assert "'%s'" % layer in js["error"]["message"], js
    st, js = D.call("GET", "/v1/models/nope")
    H.expect_error((st, js), 404, "unknown_model", "'cnn'")
    st, js = D.call("GET", "/v1/datasets/nope")
    H.expect_error((st, js), 404, "unknown_dataset", "'fmnist'")
    H.expect_error(D.call("GET", "/v1/datasets/fmnist/inputs/0/activations?model=cnn&layer=nope"), 404,
                   "unknown_layer", "'fc1'")


def test_repeated_index_request_reuses_the_index():
    r1 = build(["fc1"])
    r2 = build(["fc1"], want=(200,))  # while it builds
    assert r2["reused"] and r2["id"] == r1["id"] and r2["job"] == r1["job"], (r1, r2)
    assert D.wait_job(r1["job"])["state"] == "done"
    r3 = build(["fc1"], want=(200,))
    assert r3["reused"] and r3["id"] == r1["id"] and r3["layers"][0]["reused"], r3
    # one new layer beside a ready one: only the new one is built
    r4 = build(["fc1", "logits"])
    assert r4["ids"][0] == r1["id"] and r4["layers"][0]["reused"] and not r4["layers"][1]["reused"], r4
    assert D.wait_job(r4["job"])["state"] == "done"
    assert D.ok("GET", "/v1/jobs/%d" % r4["job"])["indexes"] == [r4["ids"][1]]
    # other parameters are another index
    r5 = build(["fc1"], partitions=8)
    assert r5["id"] not in (r1["id"], r4["ids"][1]) and not r5["reused"]
    assert D.wait_job(r5["job"])["state"] == "done"
    same = [x for x in D.ok("GET", "/v1/indexes")["indexes"] if x["layer"] == "fc1"]
    assert len(same) == 2, same


def test_input_listing():
    page = D.ok("GET", "/v1/datasets/fmnist/inputs?offset=20&limit=5")
    assert page["total"] == N and page["offset"] == 20 and [x["id"] for x in page["inputs"]] == list(range(20, 25))
    for x in page["inputs"]:
        assert x["label"] == D.ok("GET", "/v1/datasets/fmnist/inputs/%d" % x["id"])["label"]
    assert len(D.ok("GET", "/v1/datasets/fmnist/inputs")["inputs"]) == 100  # default limit
    threes = D.ok("GET", "/v1/datasets/fmnist/inputs?label=3&limit=1000")
    assert threes["total"] == 1000 and all(x["label"] == 3 for x in threes["inputs"])
    ids = [x["id"] for x in threes["inputs"]]
    assert ids == sorted(ids) and len(ids) == 1000
    tail = D.ok("GET", "/v1/datasets/fmnist/inputs?label=3&offset=995&limit=10")
    assert [x["id"] for x in tail["inputs"]] == ids[995:]
    assert D.ok("GET", "/v1/datasets/fmnist/inputs?offset=%d" % N)["inputs"] == []
    H.expect_error(D.call("GET", "/v1/datasets/fmnist/inputs?limit=0"), 422, "invalid_value", "'limit'")
    H.expect_error(D.call("GET", "/v1/datasets/fmnist/inputs?limit=1001"), 422, "invalid_value")
    H.expect_error(D.call("GET", "/v1/datasets/fmnist/inputs?label=x"), 422, "invalid_value", "'label'")
    H.expect_error(D.call("GET", "/v1/datasets/nope/inputs"), 404, "unknown_dataset")


def test_knn_by_activations_equals_knn_by_id():
    neurons = [3, 17, 42, 60]
    for t in (0, 1234, 9999):
        acts = D.ok("GET", "/v1/datasets/fmnist/inputs/%d/activations?model=cnn&layer=fc1&neurons=%s"
                    % (t, ",".join(map(str, neurons))))
        vec = [a["value"] for a in acts]
        base = {"model": "cnn", "dataset": "fmnist", "layer": "fc1", "neurons": neurons, "k": 15}
        by_id = D.ok("POST", "/v1/query/knn", dict(base, target=t, include_target=True))
        by_acts = D.ok("POST", "/v1/query/knn", dict(base, target={"activations": vec}))
        assert by_acts["results"] == by_id["results"], (t, by_acts["results"][:3], by_id["results"][:3])
        assert by_acts["results"][0]["input"] == t and by_acts["results"][0]["distance"] == 0
    H.expect_error(D.call("POST", "/v1/query/knn", dict(base, target={"activations": [1, 2]})), 422,
                   "invalid_target", "one per neuron")


def test_delete_one_index_of_a_queued_job_the_others_complete():
    # regression: the whole queued job was dropped while only the deleted
    # index was marked failed; the others stayed "building" forever
    busy = build(["conv2"], partitions=4)
    blocked = build(["pool2", "conv4"])
    assert D.ok("GET", "/v1/jobs/%d" % blocked["job"])["state"] == "queued"
    gone = D.ok("DELETE", "/v1/indexes/%d" % blocked["ids"][0])
    assert gone["deleted"] and gone["job"] == blocked["job"] and not gone["job_cancelled"], gone
    H.expect_error(D.call("GET", "/v1/indexes/%d" % blocked["ids"][0]), 404, "unknown_index")
    assert D.wait_job(busy["job"])["state"] == "done"
    j = D.wait_job(blocked["job"])
    assert j["state"] == "done", j
    assert D.ok("GET", "/v1/indexes/%d" % blocked["ids"][1])["state"] == "ready"
    H.expect_error(D.call("GET", "/v1/indexes/%d" % blocked["ids"][0]), 404)


def test_delete_one_index_of_a_running_job_the_others_complete():
    before = counts()
    r = build(["conv2", "logits"], partitions=8)
    assert wait_running(r["job"])["state"] == "running"
    gone = D.ok("DELETE", "/v1/indexes/%d" % r["ids"][0])
    assert gone["job"] == r["job"] and not gone["job_cancelled"], gone
    assert D.wait_job(r["job"])["state"] == "done"
    assert D.ok("GET", "/v1/indexes/%d" % r["ids"][1])["state"] == "ready"
    after = counts()
    assert after["neurons"] == before["neurons"] + 10, (before, after)  # logits' 10 neurons only
    assert after["indexes"] == before["indexes"] + 1, (before, after)


def test_delete_model_cancels_its_running_build():
    # regression: the job reported "done" and its blobs stayed until a restart
    D.ok("POST", "/v1/models", {"name": "cnn2", "path": H.MODEL})
    before = counts()
    r = build(["conv2"], model="cnn2")
    assert wait_running(r["job"])["state"] == "running"
    gone = D.ok("DELETE", "/v1/models/cnn2")
    assert gone["deleted"] and gone["indexes"] == [r["id"]] and gone["jobs_cancelled"] == [r["job"]], gone
    j = D.ok("GET", "/v1/jobs/%d" % r["job"])
    assert j["state"] == "failed" and j.get("cancelled") is True, j
    H.expect_error(D.call("GET", "/v1/indexes/%d" % r["id"]), 404)
    after = counts()
    assert after["neurons"] == before["neurons"] and after["indexes"] == before["indexes"], (before, after)
    assert after["models"] == before["models"] - 1
    assert "cnn2" not in stat_text()


def test_delete_dataset_cancels_its_running_build_and_says_what_went():
    body = {"name": "fm2", "path": H.TEST_IMAGES, "format": "idx"}
    body.update(H.NORM)
    D.ok("POST", "/v1/datasets", body)
    ready = build(["logits"], dataset="fm2")
    assert D.wait_job(ready["job"])["state"] == "done"
    before = counts()
    r = build(["conv2"], dataset="fm2")
    assert wait_running(r["job"])["state"] == "running"
    gone = D.ok("DELETE", "/v1/datasets/fm2")
    assert sorted(gone["indexes"]) == sorted([ready["id"], r["id"]]) and gone["jobs_cancelled"] == [r["job"]], gone
    assert D.ok("GET", "/v1/jobs/%d" % r["job"])["cancelled"] is True
    after = counts()
    assert after["inputs"] == before["inputs"] - N, (before, after)
    # the ready index (10 neurons) went; the one being built left nothing
    assert after["neurons"] == before["neurons"] - 10 and after["indexes"] == before["indexes"] - 1, (before, after)
    H.expect_error(D.call("GET", "/v1/datasets/fm2"), 404)
    assert "fm2" not in stat_text()


def test_cancel_jobs():
    before = counts()
    busy = build(["conv2"], partitions=32)
    assert wait_running(busy["job"])["state"] == "running"
    queued = build(["conv1"])
    j = D.ok("DELETE", "/v1/jobs/%d" % queued["job"])  # queued: it never runs
    assert j["state"] == "failed" and j["cancelled"], j
    j = D.ok("DELETE", "/v1/jobs/%d" % busy["job"])  # running: stopped
    assert j["state"] == "failed" and j["cancelled"] and j["error"] == "cancelled", j
    for r in (busy, queued):
        H.expect_error(D.call("GET", "/v1/indexes/%d" % r["id"]), 404)
    after = counts()
    assert after["jobs"] == before["jobs"] + 2, (before, after)  # the job records stay, failed and cancelled
    after["jobs"] = before["jobs"]
    assert after == before, (before, after)
    H.expect_error(D.call("DELETE", "/v1/jobs/%d" % busy["job"]), 409, "job_finished")
    H.expect_error(D.call("DELETE", "/v1/jobs/99999"), 404, "unknown_job")
    H.expect_error(D.call("DELETE", "/v1/jobs/x"), 404, "not_found")


def test_one_daemon_per_directory_and_stat_beside_it():
    # regression: a second process opening the directory (--stat, a second
    # daemon) ran the crash sweep against the live daemon's builds
    r = build(["conv2"], partitions=64)
    assert wait_running(r["job"])["state"] == "running"
    text = stat_text()
    assert "building" in text and "conv2" in text, text
    second = subprocess.run([os.path.join(H.ROOT, H.args().build, "deepeverestd"), "--data", D.data, "--listen",
                             "127.0.0.1:%d" % H.free_port()], capture_output=True, text=True, timeout=60)
    assert second.returncode != 0 and "in use by another process" in second.stderr, second.stderr
    assert D.wait_job(r["job"])["state"] == "done"
    assert D.ok("GET", "/v1/indexes/%d" % r["id"])["state"] == "ready"


def test_cascade_delete_past_4096_indexes():
    # regression: the cascade delete of a model's indexes stopped at 4,096
    D.ok("POST", "/v1/models", {"name": "many", "path": H.MODEL})
    before = counts()
    D.stop()
    tool(D.data, "inject-indexes", "many", "fmnist", "fc1", "5000")
    D.start()
    gone = D.ok("DELETE", "/v1/models/many")
    assert len(gone["indexes"]) == 5000, len(gone["indexes"])
    after = counts()
    assert after["indexes"] == before["indexes"] and after["neurons"] == before["neurons"], (before, after)


def openapi_routes(doc):
    out = set()
    for path, item in doc["paths"].items():
        pattern = "/".join("*" if seg.startswith("{") else seg for seg in path.split("/"))
        for method in item:
            if method in ("get", "post", "put", "delete", "patch"):
                out.add((method.upper(), pattern))
    return out


def resolve_refs(doc, node, where="#"):
    if isinstance(node, dict):
        if "$ref" in node:
            ref = node["$ref"]
            assert ref.startswith("#/"), (where, ref)
            target = doc
            for part in ref[2:].split("/"):
                assert part in target, "%s: dangling $ref %s" % (where, ref)
                target = target[part]
        for k, v in node.items():
            resolve_refs(doc, v, where + "/" + k)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            resolve_refs(doc, v, "%s/%d" % (where, i))


def test_openapi_document_matches_the_router():
    doc = D.ok("GET", "/v1/openapi.json")
    assert doc["openapi"].startswith("3.") and doc["info"]["version"] == D.ok("GET", "/v1/health")["version"]
    out = subprocess.run([os.path.join(H.ROOT, H.args().build, "deepeverestd"), "--routes"], capture_output=True,
                         text=True, timeout=30)
    routes = {tuple(line.split(" ", 1)) for line in out.stdout.splitlines()}
    documented = openapi_routes(doc)
    assert routes - documented == set(), "routes missing from the document: %s" % sorted(routes - documented)
    assert documented - routes == set(), "documented routes the daemon lacks: %s" % sorted(documented - routes)
    resolve_refs(doc, doc)
    for path, item in doc["paths"].items():
        params = {seg[1:-1] for seg in path.split("/") if seg.startswith("{")}
        for method, op in item.items():
            if method == "parameters":
                continue
            assert op.get("responses") and op.get("summary"), (method, path)
            declared = {p["name"] for p in op.get("parameters", []) + item.get("parameters", [])
                        if "$ref" not in p and p.get("in") == "path"}
            declared |= {doc["components"]["parameters"][p["$ref"].split("/")[-1]]["name"]
                         for p in op.get("parameters", []) + item.get("parameters", []) if "$ref" in p
                         and doc["components"]["parameters"][p["$ref"].split("/")[-1]]["in"] == "path"}
            assert params == declared, (method, path, params, declared)


def test_end():
    D.close()


if __name__ == "__main__":
    H.run(globals())
