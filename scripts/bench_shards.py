#!/usr/bin/env python3
"""Scale-out, measured: a coordinator over 1, 2 and 4 shard daemons on this
machine against one daemon holding the whole dataset, side by side in one
run, on the Fashion-MNIST training set (60,000 inputs) and the demo CNN.

For each shard count:
  - import and index build (layers pool2 and fc1) through the coordinator:
    wall time against the one daemon's;
  - the same random top-k and kNN queries through both: answers must be
    equal (the run fails otherwise); latency p50/p99 warm (every activation
    cached) and the coordinator's own overhead per query (its wall time
    minus its slowest shard call);
  - with the shards' caches off (--cache-mb 0), parallel merging against
    threshold merging (--merge threshold: shard 0 first, the others told its
    k-th best): inputs computed and latency.
Shards get one torch thread each (--threads 1): they share this machine's 2
cores, and OpenMP threads that outnumber the cores spin against each other.
On real shards (a machine or GPU each) builds and cold queries divide by the
shard count; here they cannot, so the build and cold-query figures measure
the coordination, not the hardware.

    python3 scripts/bench_shards.py [--queries 100] [--out bench/results]
Writes shards.json and shards.md."""

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(__file__))
from bench_common import ROOT, Daemon, free_port  # noqa: E402

FM = "/usr/share/datasets/fashion-mnist"
NORM = {"scale": 1 / 255, "mean": 0.2860, "std": 0.3530}
LAYERS = {"pool2": 3136, "fc1": 64}


class Coordinator(Daemon):
    def __init__(self, binary, data_dir, shards, extra=()):
        super().__init__(binary, data_dir, extra)
        self.shards = shards

    def start(self, timeout=60):
        os.makedirs(self.data, exist_ok=True)
        self.port = free_port()
        self.logf = open(os.path.join(self.data, "coordinator.log"), "ab")
        urls = ",".join("http://127.0.0.1:%d" % d.port for d in self.shards)
        self.proc = subprocess.Popen([self.binary, "--coordinator", "--shards", urls, "--listen",
                                      "127.0.0.1:%d" % self.port] + self.extra, stdout=self.logf,
                                     stderr=subprocess.STDOUT)
        t0 = time.time()
        while time.time() - t0 < timeout:
            try:
                if self.call("GET", "/v1/health", timeout=2)[0] == 200:
                    return self
            except OSError:
                self._drop()
            time.sleep(0.1)
        raise RuntimeError("coordinator did not start")


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))] if xs else None


def setup(d):
    d.ok("POST", "/v1/models", {"name": "cnn", "path": os.path.join(ROOT, "models", "fmnist_cnn.pt")})
    t0 = time.time()
    body = {"name": "train", "path": FM + "/train-images-idx3-ubyte.gz", "labels_path": FM +
            "/train-labels-idx1-ubyte.gz", "format": "idx"}
    body.update(NORM)
    d.ok("POST", "/v1/datasets", body)
    t_import = time.time() - t0
    t0 = time.time()
    r = d.ok("POST", "/v1/indexes", {"model": "cnn", "dataset": "train", "layers": list(LAYERS)}, want=(202,))
    assert d.wait_job(r["job"])["state"] == "done"
    return t_import, time.time() - t0


def queries(n, seed, N):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        layer = rng.choice(list(LAYERS))
        kind = rng.choice(["topk", "knn"])
        body = {"model": "cnn", "dataset": "train", "layer": layer, "k": 10,
                "neurons": rng.sample(range(LAYERS[layer]), rng.choice([3, 10]))}
        if kind == "knn":
            body["target"] = rng.randrange(N)
        out.append((kind, body))
    return out


def run_queries(d, qs):
    lat, res, stats = [], [], []
    for kind, body in qs:
        ms, st, js = d.timed("POST", "/v1/query/" + kind, body)
        assert st == 200, js
        lat.append(ms)
        res.append(js["results"])
        stats.append(js["stats"])
    return lat, res, stats


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--shards", default="1,2,4")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results"))
    ap.add_argument("--build", default="build")
    a = ap.parse_args()
    binary = os.path.join(ROOT, a.build, "deepeverestd")
    tmp = tempfile.mkdtemp(prefix="de-bench-shards-")
    report = {"machine": os.cpu_count(), "queries": a.queries, "runs": []}
    one = Daemon(binary, os.path.join(tmp, "one")).start()
    procs = [one]
    try:
        t_imp1, t_build1 = setup(one)
        N = one.ok("GET", "/v1/datasets/train")["count"]
        qs = queries(a.queries, 7, N)
        run_queries(one, qs)  # warm its cache
        lat1, res1, _ = run_queries(one, qs)
        report["one"] = {"import_s": t_imp1, "build_s": t_build1, "warm_p50_ms": pct(lat1, 50),
                         "warm_p99_ms": pct(lat1, 99), "inputs": N}
        print("one daemon: import %.1f s, build %.1f s, warm query p50 %.2f ms p99 %.2f ms" %
              (t_imp1, t_build1, pct(lat1, 50), pct(lat1, 99)), flush=True)
        for S in [int(x) for x in a.shards.split(",")]:
            shards = [Daemon(binary, os.path.join(tmp, "s%d-%d" % (S, i)), ["--threads", "1"]).start()
                      for i in range(S)]
            procs += shards
            co = Coordinator(binary, os.path.join(tmp, "co%d" % S), shards).start()
            procs.append(co)
            t_imp, t_build = setup(co)
            run_queries(co, qs)
            lat, res, stats = run_queries(co, qs)
            assert res == res1, "answers differ from one daemon's over %d shards" % S
            over = [ms - max(st["shard_ms"]) for ms, st in zip(lat, stats)]
            run = {"shards": S, "import_s": t_imp, "build_s": t_build, "build_vs_one": t_build / t_build1,
                   "warm_p50_ms": pct(lat, 50), "warm_p99_ms": pct(lat, 99), "overhead_p50_ms": pct(over, 50),
                   "overhead_p99_ms": pct(over, 99), "answers_equal": True}
            # cold: caches off, parallel against threshold merging
            for d in shards:
                d.stop()
                d.extra = ["--threads", "1", "--cache-mb", "0"]
                d.start()
            co.stop()
            co.start()
            cot = Coordinator(binary, os.path.join(tmp, "cot%d" % S), shards, ["--merge", "threshold"]).start()
            procs.append(cot)
            for name, c in (("parallel", co), ("threshold", cot)):
                lat_c, res_c, st_c = run_queries(c, qs)
                assert res_c == res1, "%s merging differs from one daemon over %d shards" % (name, S)
                run[name] = {"cold_p50_ms": pct(lat_c, 50), "cold_p99_ms": pct(lat_c, 99),
                             "inputs_computed": sum(s["inputs_computed"] for s in st_c)}
            report["runs"].append(run)
            print("%d shard(s): import %.1f s, build %.1f s (%.2fx one daemon's), warm p50 %.2f ms p99 %.2f ms, "
                  "coordinator overhead p50 %.2f ms p99 %.2f ms; cold parallel p50 %.1f ms (%d inputs computed), "
                  "threshold p50 %.1f ms (%d computed)" %
                  (S, t_imp, t_build, t_build / t_build1, run["warm_p50_ms"], run["warm_p99_ms"],
                   run["overhead_p50_ms"], run["overhead_p99_ms"], run["parallel"]["cold_p50_ms"],
                   run["parallel"]["inputs_computed"], run["threshold"]["cold_p50_ms"],
                   run["threshold"]["inputs_computed"]), flush=True)
            for d in shards + [co, cot]:
                d.stop()
    finally:
        for d in procs:
            d.stop()
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "shards.json"), "w") as f:
        json.dump(report, f, indent=1)
    lines = ["# Scale-out on one 2-core machine (scripts/bench_shards.py)", "",
             "Fashion-MNIST training set (%d inputs), demo CNN, index of pool2+fc1, %d random queries (k=10, "
             "groups of 3 or 10, top-k and kNN by id). Answers through the coordinator equal one daemon's in "
             "every run." % (report["one"]["inputs"], a.queries), "",
             "| shards | build s (one daemon %.1f) | warm p50 / p99 ms (one daemon %.2f / %.2f) | coordinator "
             "overhead p50 / p99 ms | cold p50 ms parallel / threshold | inputs computed parallel / threshold |"
             % (report["one"]["build_s"], report["one"]["warm_p50_ms"], report["one"]["warm_p99_ms"]),
             "|---|---|---|---|---|---|"]
    for r in report["runs"]:
        lines.append("| %d | %.1f | %.2f / %.2f | %.2f / %.2f | %.1f / %.1f | %d / %d |" % (
            r["shards"], r["build_s"], r["warm_p50_ms"], r["warm_p99_ms"], r["overhead_p50_ms"], r["overhead_p99_ms"],
            r["parallel"]["cold_p50_ms"], r["threshold"]["cold_p50_ms"], r["parallel"]["inputs_computed"],
            r["threshold"]["inputs_computed"]))
    with open(os.path.join(a.out, "shards.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
