"""Scale-out over real HTTP: three shard daemons and a coordinator on
loopback against one daemon holding the whole dataset. Hundreds of random
top-k and kNN queries (every method, filters, id, tensor and activation
targets) must equal the single daemon's answers bit for bit; the catalog,
per-input reads, index builds, predictions and uploads look the same through
the coordinator; a killed or hung shard gives 503 shard_unavailable within a
stated bound, and its restart restores exact answers; a creation that fails
on one shard leaves nothing anywhere; the token guards the coordinator and
is presented to the shards."""

import io
import os
import random
import signal
import struct
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(__file__))
import harness as H  # noqa: E402

N = 10000
S = 3
LAYERS = {"pool2": 3136, "fc1": 64}
RNG = random.Random(20261202)
SHARDS, ONE, CO = [], None, None


def both(method, path, body=None, want=(200, 201, 202), **kw):
    return CO.ok(method, path, body, want=want, **kw), ONE.ok(method, path, body, want=want, **kw)


def test_start():
    global ONE, CO
    # one torch thread a shard: three shards share this machine's cores, and
    # OpenMP threads that outnumber the cores spin against each other
    SHARDS.extend(H.Daemon(extra=["--threads", "1"]).start() for _ in range(S))
    ONE = H.Daemon().start()
    CO = H.Coordinator(SHARDS).start()
    h = CO.ok("GET", "/v1/health")
    assert h["role"] == "coordinator" and h["status"] == "ok" and [x["state"] for x in h["shards"]] == ["ok"] * S
    binary = os.path.join(H.ROOT, H.args().build, "deepeverestd")
    routes = [subprocess.run([binary] + f + ["--routes"], capture_output=True, text=True, timeout=30).stdout
              for f in ([], ["--coordinator"])]
    assert routes[0] == routes[1] and routes[0].count("\n") > 30, "the coordinator must serve every route"
    CO.setup_demo()
    ONE.setup_demo()
    # bad flags
    for flags in (["--coordinator"], ["--coordinator", "--shards", "http://x:1", "--data", ONE.data],
                  ["--shards", "http://x:1", "--data", ONE.data], ["--coordinator", "--shards", "ftp://x"]):
        p = subprocess.run([binary] + flags, capture_output=True, text=True, timeout=30)
        assert p.returncode == 2 and p.stderr, (flags, p.returncode)


def test_slices_and_the_whole():
    firsts = []
    for i, d in enumerate(SHARDS):
        rec = d.ok("GET", "/v1/datasets/fmnist")
        assert rec["total"] == N and rec["first"] == N * i // S and rec["count"] == N * (i + 1) // S - N * i // S
        firsts.append(rec["first"])
    a, b = both("GET", "/v1/datasets/fmnist")
    assert a == dict(b, created=a["created"]) and "first" not in a
    a, b = both("GET", "/v1/datasets")
    assert [x["count"] for x in a["datasets"]] == [N]
    # pages across shard boundaries, filtered and not
    for qs in ("offset=3330&limit=10", "offset=0&limit=1000", "offset=9995&limit=10", "label=3&offset=900&limit=200",
               "label=7&offset=0&limit=5"):
        a, b = both("GET", "/v1/datasets/fmnist/inputs?" + qs)
        assert a == b, qs
    st, csv = CO.call("GET", "/v1/datasets/fmnist/inputs?offset=3331&limit=4&format=csv")
    assert st == 200 and csv.decode().splitlines()[1:] == ["%d,%d" % (x["id"], x["label"]) for x in
                                                           ONE.ok("GET", "/v1/datasets/fmnist/inputs?offset=3331&"
                                                                  "limit=4")["inputs"]]
    # per-input reads go to the owner: equal bytes
    for i in (0, 3332, 3333, 3334, 6666, 6667, 9999):
        for suffix in ("", "/image.png", "/activations?model=cnn&layer=fc1&top=5",
                       "/activations?model=cnn&layer=pool2&neurons=3,99,3000", "?tensor=1"):
            sa, ra = CO.call("GET", "/v1/datasets/fmnist/inputs/%d%s" % (i, suffix))
            sb, rb = ONE.call("GET", "/v1/datasets/fmnist/inputs/%d%s" % (i, suffix))
            assert sa == sb == 200 and ra == rb, (i, suffix)
    H.expect_error(CO.call("GET", "/v1/datasets/fmnist/inputs/10000"), 404)
    H.expect_error(CO.call("GET", "/v1/datasets/fmnist/inputs/-1"), 404)
    H.expect_error(CO.call("GET", "/v1/datasets/nope"), 404, "unknown_dataset")
    H.expect_error(CO.call("POST", "/v1/datasets", {"name": "x", "path": H.TEST_IMAGES,
                                                    "slice": {"shard": 0, "shards": 2}}), 422)


def test_index_build_is_one_job():
    t0 = time.time()
    r = CO.ok("POST", "/v1/indexes", {"model": "cnn", "dataset": "fmnist", "layers": list(LAYERS)}, want=(202,))
    job = CO.wait_job(r["job"])
    t_coord = time.time() - t0
    assert job["state"] == "done" and job["done"] == job["total"] == N, job
    for d in SHARDS:  # the same job id on every shard, each over its slice
        j = d.ok("GET", "/v1/jobs/%d" % r["job"])
        assert j["state"] == "done" and j["total"] == d.ok("GET", "/v1/datasets/fmnist")["count"]
    t0 = time.time()
    r1 = ONE.ok("POST", "/v1/indexes", {"model": "cnn", "dataset": "fmnist", "layers": list(LAYERS)}, want=(202,))
    assert ONE.wait_job(r1["job"])["state"] == "done"
    print("  build of %s: coordinator over %d shards %.1f s, one daemon %.1f s" % (list(LAYERS), S, t_coord,
                                                                                   time.time() - t0))
    for kind in ("full",):
        for d in (CO, ONE):
            rr = d.ok("POST", "/v1/indexes", {"model": "cnn", "dataset": "fmnist", "layer": "fc1", "kind": kind},
                      want=(202,))
            assert d.wait_job(rr["job"])["state"] == "done"
    ix = CO.ok("GET", "/v1/indexes")["indexes"]
    assert sorted((x["layer"], x["kind"], x["state"], x["count"]) for x in ix) == [
        ("fc1", "full", "ready", N), ("fc1", "npi", "ready", N), ("pool2", "npi", "ready", N)]
    fc1 = [x for x in ix if x["layer"] == "fc1" and x["kind"] == "npi"][0]
    assert CO.ok("GET", "/v1/indexes/%d" % fc1["id"]) == fc1
    # a neuron over the shards: the histogram of the whole, the top of the whole
    a = CO.ok("GET", "/v1/indexes/%d/neurons/5?mai=20" % fc1["id"])
    one_fc1 = [x for x in ONE.ok("GET", "/v1/indexes")["indexes"] if x["layer"] == "fc1" and x["kind"] == "npi"][0]
    b = ONE.ok("GET", "/v1/indexes/%d/neurons/5?mai=20" % one_fc1["id"])
    assert sum(p["count"] for p in a["partitions"]) == N == sum(p["count"] for p in b["partitions"])
    assert [m["value"] for m in a["mai"]] == [m["value"] for m in b["mai"]]
    # a second POST of the same build reuses it everywhere
    again = CO.ok("POST", "/v1/indexes", {"model": "cnn", "dataset": "fmnist", "layer": "fc1"}, want=(200,))
    assert again["reused"] is True


def random_body(layer):
    kind = RNG.choice(["topk", "knn"])
    g = RNG.choice([1, 3, 10])
    neurons = RNG.sample(range(LAYERS[layer]), g)
    if RNG.random() < 0.15 and layer == "pool2":  # coordinates [c, h, w]
        neurons = [[n // 49, n % 49 // 7, n % 7] for n in neurons]
    body = {"model": "cnn", "dataset": "fmnist", "layer": layer, "neurons": neurons,
            "k": RNG.choice([1, 5, 10, 50, 200]), "method": RNG.choice(["auto", "nta", "bounds", "scan"])}
    if layer == "fc1" and RNG.random() < 0.1:
        body["method"] = "materialized"
    if kind == "topk":
        body["agg"] = RNG.choice(["sum", "mean", "max", "min"])
        if body["agg"] == "sum" and RNG.random() < 0.3:
            body["weights"] = [RNG.choice([0.5, 1, 2, -1]) for _ in neurons]
            body["weights"][0] = 1
    else:
        body["metric"] = RNG.choice(["l2", "l1", "linf", "cosine"])
        r = RNG.random()
        if r < 0.6:
            body["target"] = RNG.randrange(N)
            body["include_target"] = RNG.random() < 0.2
        elif r < 0.8:
            body["target"] = {"tensor": TENSORS[RNG.randrange(len(TENSORS))]}
        else:
            body["target"] = {"activations": [RNG.uniform(0, 3) for _ in neurons]}
    f = RNG.random()
    if f < 0.15:
        body["filter"] = {"labels": RNG.sample(range(10), 3)}
    elif f < 0.25:  # ids on one shard, or across all
        lo = RNG.choice([0, 3000, 6000])
        body["filter"] = {"ids": RNG.sample(range(lo, lo + RNG.choice([500, 4000])), 40)}
    return kind, body


TENSORS = []


def test_random_queries_equal_one_daemon():
    for i in (17, 5000, 9000):
        TENSORS.append(ONE.ok("GET", "/v1/datasets/fmnist/inputs/%d?tensor=1" % i)["tensor"])
    n = 0
    computed = {"coord": 0, "one": 0, "threshold": 0}
    # a second coordinator over the same shards (stateless replicas) that
    # merges with a threshold: shard 0 first, the others told its k-th best
    cot = H.Coordinator(SHARDS, extra=["--merge", "threshold"]).start()
    try:
        for layer in LAYERS:
            for i in range(120):
                kind, body = random_body(layer)
                a, b = both("POST", "/v1/query/" + kind, body)
                assert a["results"] == b["results"], (kind, body, a["results"][:3], b["results"][:3])
                assert a["stats"]["shards"] == S and len(a["stats"]["shard_ms"]) == S
                computed["coord"] += a["stats"]["inputs_computed"]
                computed["one"] += b["stats"]["inputs_computed"]
                if i % 2 == 0:
                    t = cot.ok("POST", "/v1/query/" + kind, body)
                    assert t["results"] == b["results"], ("threshold", kind, body, t["results"][:3])
                    computed["threshold"] += t["stats"]["inputs_fetched"]
                n += 1
    finally:
        cot.close()
    print("  %d random queries equal (%d through a threshold-merging coordinator too); inputs computed: "
          "shards %d, one daemon %d" % (n, n // 2, computed["coord"], computed["one"]))
    # errors read as a daemon's
    base = {"model": "cnn", "dataset": "fmnist", "layer": "fc1", "neurons": [1], "k": 3}
    for body, status in ((dict(base, k=0), 422), (dict(base, target=N), 422), (dict(base, layer="nope"), 404),
                         (dict(base, filter={"labels": [99]}), 422), (dict(base, model="nope"), 404)):
        kind = "knn" if "target" in body else "topk"
        sa, ja = CO.call("POST", "/v1/query/" + kind, body)
        sb, jb = ONE.call("POST", "/v1/query/" + kind, body)
        assert sa == sb == status and ja["error"]["code"] == jb["error"]["code"], (body, ja, jb)
    # CSV through the coordinator
    body = dict(base, k=5, agg="max")
    st, raw = CO.call("POST", "/v1/query/topk?format=csv", body)
    rows = raw.decode().splitlines()
    assert st == 200 and rows[0].startswith("rank,input,score") and len(rows) == 6


def test_eight_concurrent_clients():
    cases = [random_body(layer) for layer in LAYERS for _ in range(5)]
    expected = [ONE.ok("POST", "/v1/query/" + k, b)["results"] for k, b in cases]
    errors = []

    def client(c):
        try:
            for i in range(len(cases)):
                j = (i + 3 * c) % len(cases)
                kind, body = cases[j]
                if CO.ok("POST", "/v1/query/" + kind, body)["results"] != expected[j]:
                    errors.append((c, j))
        except Exception as e:  # noqa: BLE001
            errors.append((c, repr(e)))
    threads = [threading.Thread(target=client, args=(c,)) for c in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:5]


def test_predictions_and_classes_through_the_coordinator():
    classes = ["c%d" % i for i in range(10)]
    for d in (CO, ONE):
        assert d.ok("PUT", "/v1/datasets/fmnist/classes", {"classes": classes})["classes"] == classes
        t0 = time.time()
        r = d.ok("POST", "/v1/predictions", {"model": "cnn", "dataset": "fmnist"}, want=(202,))
        assert d.wait_job(r["job"])["state"] == "done"
        print("  predictions by the %s: %.1f s" % ("coordinator" if d is CO else "one daemon", time.time() - t0))
    a, b = both("GET", "/v1/predictions/cnn/fmnist")
    assert a["confusion"] == b["confusion"] and abs(a["accuracy"] - b["accuracy"]) < 1e-12 and a["count"] == N
    a, b = both("GET", "/v1/datasets/fmnist/inputs?model=cnn&misclassified=true&offset=100&limit=300")
    assert a == b
    body = {"model": "cnn", "dataset": "fmnist", "layer": "fc1", "neurons": [3, 9], "k": 20, "target": 42,
            "filter": {"misclassified": True}}
    a, b = both("POST", "/v1/query/knn", body)
    assert a["results"] == b["results"] and all("predicted_class" in x for x in a["results"])
    assert [x["model"] for x in CO.ok("GET", "/v1/predictions")["predictions"]] == ["cnn"]
    # attribution goes to the owner
    q = "model=cnn&layer=fc1&neurons=3,9&method=gradcam"
    for i in (1, 5000):
        a, b = both("GET", "/v1/datasets/fmnist/inputs/%d/attribution?%s" % (i, q))
        assert a == b


def npy(arr_u8, shape):
    hdr = "{'descr': '|u1', 'fortran_order': False, 'shape': (%s), }" % "".join("%d, " % s for s in shape)
    hdr = hdr.ljust(117) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(hdr)) + hdr.encode() + bytes(arr_u8)


def test_upload_is_streamed_to_every_shard():
    rng = random.Random(3)
    n = 1000
    pixels = [rng.randrange(256) for _ in range(n * 784)]
    body = npy(pixels, (n, 1, 28, 28))
    for d in (CO, ONE):
        st, js = d.call("PUT", "/v1/datasets/up?scale=0.00392156862745098&mean=0.286&std=0.353", raw=body,
                        headers={"Content-Type": "application/octet-stream"})
        assert st == 201 and js["count"] == n, js
    assert sum(d.ok("GET", "/v1/datasets/up")["count"] for d in SHARDS) == n
    for kind, body in (("topk", {"layer": "fc1", "neurons": [4, 20], "k": 10}),
                       ("knn", {"layer": "fc1", "neurons": [4, 20, 33], "k": 10, "target": 777})):
        b = dict(body, model="cnn", dataset="up", method="scan")
        a, o = both("POST", "/v1/query/" + kind, b)
        assert a["results"] == o["results"]
    a, b = both("GET", "/v1/datasets/up/inputs/666/image.png")
    assert a == b
    for d in (CO, ONE):
        d.ok("DELETE", "/v1/datasets/up")
    assert all(d.call("GET", "/v1/datasets/up")[0] == 404 for d in SHARDS)


def test_a_failed_import_leaves_nothing_anywhere():
    # shard 2 may import only from an empty directory: its part fails, the others' are undone
    SHARDS[2].stop()
    SHARDS[2].start(extra=["--threads", "1", "--import-root", SHARDS[2].data], same_port=True)
    body = {"name": "half", "path": H.TEST_IMAGES, "labels_path": H.TEST_LABELS, "format": "idx"}
    st, js = CO.call("POST", "/v1/datasets", body)
    assert st in (403, 422) and "error" in js, (st, js)
    for d in SHARDS:
        assert d.call("GET", "/v1/datasets/half")[0] == 404
        assert "half" not in [x["name"] for x in d.ok("GET", "/v1/datasets")["datasets"]]
    assert CO.call("GET", "/v1/datasets/half")[0] == 404
    # a model one shard cannot load: registered nowhere
    SHARDS[2].stop()
    SHARDS[2].start(extra=["--threads", "1"], same_port=True)
    st, js = CO.call("POST", "/v1/models", {"name": "cnn", "path": H.MODEL})
    assert st == 409  # taken on every shard: nothing undone
    assert all(d.call("GET", "/v1/models/cnn")[0] == 200 for d in SHARDS)


def test_a_killed_shard_gives_503_and_its_restart_restores_answers():
    kind, body = "knn", {"model": "cnn", "dataset": "fmnist", "layer": "fc1", "neurons": [1, 2, 3], "k": 10,
                         "target": 5000}
    want = ONE.ok("POST", "/v1/query/knn", body)["results"]
    SHARDS[1].kill()
    t0 = time.time()
    st, js = CO.call("POST", "/v1/query/knn", body)
    dt = time.time() - t0
    assert st == 503 and js["error"]["code"] == "shard_unavailable" and "shard 1" in js["error"]["message"], js
    assert dt < 5, "503 took %.1f s" % dt
    h = CO.ok("GET", "/v1/health")
    assert h["status"] == "degraded" and h["shards"][1]["state"] == "unavailable"
    H.expect_error(CO.call("GET", "/v1/datasets/fmnist/inputs?limit=5"), 503, "shard_unavailable")
    assert CO.call("GET", "/v1/datasets/fmnist/inputs/5000")[0] == 503  # the layout needs every shard
    H.expect_error(CO.call("POST", "/v1/models", {"name": "m2", "path": H.MODEL}), 503, "shard_unavailable")
    assert all(d.call("GET", "/v1/models/m2")[0] == 404 for d in (SHARDS[0], SHARDS[2]))
    SHARDS[1].start(same_port=True)
    assert CO.ok("POST", "/v1/query/knn", body)["results"] == want
    assert CO.ok("GET", "/v1/health")["status"] == "ok"


def test_a_hung_shard_gives_503_within_the_timeout():
    co2 = H.Coordinator(SHARDS, extra=["--shard-timeout-s", "2"]).start()  # a second, stateless replica
    try:
        body = {"model": "cnn", "dataset": "fmnist", "layer": "fc1", "neurons": [7], "k": 5}
        want = ONE.ok("POST", "/v1/query/topk", body)["results"]
        assert co2.ok("POST", "/v1/query/topk", body)["results"] == want
        SHARDS[2].proc.send_signal(signal.SIGSTOP)
        try:
            t0 = time.time()
            st, js = co2.call("POST", "/v1/query/topk", body)
            dt = time.time() - t0
            assert st == 503 and js["error"]["code"] == "shard_unavailable" and "shard 2" in js["error"]["message"]
            assert dt < 2 + 3, "a hung shard held the query %.1f s (bound 2 s + the others' time)" % dt
            print("  hung shard: 503 after %.2f s (--shard-timeout-s 2)" % dt)
        finally:
            SHARDS[2].proc.send_signal(signal.SIGCONT)
        assert co2.ok("POST", "/v1/query/topk", body)["results"] == want
        metrics = co2.ok("GET", "/metrics", want=(200,))
        text = metrics.decode() if isinstance(metrics, bytes) else str(metrics)
        assert 'deepeverest_shard_unavailable_total{shard="2"' in text and "shard_latency_seconds_total" in text
    finally:
        co2.close()


def test_the_token_guards_the_coordinator_and_reaches_the_shards():
    tok = os.path.join(CO.data, "token")
    with open(tok, "w") as f:
        f.write("s3cret\n")
    shards = [H.Daemon(extra=["--token-file", tok]).start() for _ in range(2)]
    co = H.Coordinator(shards, extra=["--token-file", tok]).start()
    try:
        body = {"name": "cnn", "path": H.MODEL}
        H.expect_error(co.call("POST", "/v1/models", body), 401, "unauthorized")
        auth = {"Authorization": "Bearer s3cret"}
        assert co.call("POST", "/v1/models", body, headers=auth)[0] == 201
        assert all(d.call("GET", "/v1/models/cnn")[0] == 200 for d in shards)
        assert co.ok("GET", "/v1/models")["models"][0]["name"] == "cnn"  # reads stay open
        H.expect_error(co.call("DELETE", "/v1/models/cnn"), 401)
        assert co.call("DELETE", "/v1/models/cnn", headers=auth)[0] == 200
    finally:
        co.close()
        for d in shards:
            d.close()


def test_end():
    CO.close()
    ONE.close()
    for d in SHARDS:
        d.close()


if __name__ == "__main__":
    H.run(globals())
