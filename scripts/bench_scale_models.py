#!/usr/bin/python3
"""Paper-scale benchmark: VGG16 (32x32x3) and ResNet18 (192x192x3, a first
layer of 589,824 neurons) over 10,000 inputs, and the demo CNN over
1,000,000 inputs, each layer in a fresh daemon with --cache-mb 0:

  - the plain pass: a scan query (G=1) -- every input through the model to the
    layer, which is also the scan baseline the queries are compared with;
  - the index build: wall time, bytes against full materialization (its
    entries, and LMDB's pages for them), spilled or not, peak RSS over the
    idle daemon (VmHWM reset before, read after);
  - top-k and kNN with groups of 1, 10, 30 and 100 neurons (half an input's
    most active, half random): p50 latency, inputs computed, speedup over the
    scan, exactness against scan (at N=10,000 every query; at 1,000,000 the
    scan is estimated from the pass over a 50,000-input sample and queries are
    checked against scan on a 5,000-id filter); peak RSS of the queries.

Needs the files of scripts/make_scale_models.py (vgg16, resnet18, fmnist-1m)
under build/scale. Results: bench/results/scale_models.{json,md}.
  bench_scale_models.py [--only vgg16,resnet18,cnn1m] [--reps 5]"""

import argparse
import json
import os
import random
import re
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
import bench_common as B  # noqa: E402

ROOT = B.ROOT
SCALE = os.path.join(ROOT, "build", "scale")
NORM = {"mean": 0.2860, "std": 0.3530}
GROUPS = (1, 10, 30, 100)
CONFIGS = {
    "vgg16": {"model": "vgg16_fmnist32.pt", "data": "fmnist32_test.npy", "labels": "fmnist32_test_labels.npy",
              "layers": ["features.5", "features.22", "classifier.1"], "n": 10000},
    "resnet18": {"model": "resnet18_fmnist192.pt", "data": "fmnist192_test.npy",
                 "labels": "fmnist192_test_labels.npy", "layers": ["relu", "layer1", "layer3"], "n": 10000},
    "cnn1m": {"model": os.path.join(ROOT, "models", "fmnist_cnn.pt"), "data": "fmnist_1m.npy",
              "labels": "fmnist_1m_labels.npy", "layers": ["fc1", "conv4", "pool1"], "n": 1000000},
}


def log(*a):
    print(time.strftime("%H:%M:%S"), *a, flush=True)


def query(d, kind, body):
    ms, st, js = d.timed("POST", "/v1/query/" + kind, body, timeout=7200)
    if st != 200:
        raise B.HttpError(st, js, "query")
    return ms, js


def store_neurons_bytes(d):
    """LMDB pages of the neuron entries, read with --stat's read-only open."""
    import subprocess
    out = subprocess.run([os.path.join(ROOT, "build", "deepeverestd"), "--data", d.data, "--stat"],
                         capture_output=True, text=True).stdout
    m = re.search(r"neurons ([0-9.]+) MiB", out)
    return float(m.group(1)) * 1048576 if m else None


def run_layer(name, cfg, layer, reps, rng):
    data = os.path.join(SCALE, "bench-data", "%s-%s" % (name, layer.replace(".", "_")))
    shutil.rmtree(data, ignore_errors=True)
    d = B.Daemon(os.path.join(ROOT, "build", "deepeverestd"), data, ["--cache-mb", "0"]).start()
    row = {"model": name, "layer": layer}
    try:
        mpath = cfg["model"] if os.path.isabs(cfg["model"]) else os.path.join(SCALE, cfg["model"])
        m = d.ok("POST", "/v1/models", {"name": "m", "path": mpath})
        ly = [l for l in m["layers"] if l["name"] == layer][0]
        row.update(neurons=ly["neurons"], shape=ly["shape"], batch=m["batch"])
        t0 = time.time()
        ds = d.ok("POST", "/v1/datasets", dict(NORM, name="ds", path=os.path.join(SCALE, cfg["data"]),
                                               labels_path=os.path.join(SCALE, cfg["labels"])), timeout=7200)
        row["import_s"] = round(time.time() - t0, 1)
        n = ds["count"]
        row.update(n=n, full_bytes=4 * n * ly["neurons"])
        base = {"model": "m", "dataset": "ds", "layer": layer}
        big = n > 100000
        # the plain pass = the scan baseline (at 1M: a 50,000-input sample, scaled)
        scan_body = dict(base, neurons=[0], k=10, method="scan")
        sample = None
        if big:
            sample = sorted(rng.sample(range(n), 50000))
            scan_body["filter"] = {"ids": sample}
        with B.MemSampler(d.pid) as mem:
            ms, js = query(d, "topk", scan_body)
        scan_ms = ms * (n / len(sample) if big else 1)
        row.update(pass_s=round(scan_ms / 1000, 2), pass_estimated=big, pass_mem=mem.report())
        log("%s %s: %d neurons, plain pass %.1f s%s" % (name, layer, ly["neurons"], scan_ms / 1000,
                                                         " (estimated from 50,000 inputs)" if big else ""))
        # the build
        with B.MemSampler(d.pid) as mem:
            t0 = time.time()
            r = d.ok("POST", "/v1/indexes", dict(base), want=(202,))
            j = d.wait_job(r["job"], timeout=14400, poll=0.5)
            build_s = time.time() - t0
        assert j["state"] == "done", j
        ix = d.index(r["id"])
        ilog = "\n".join(l for l in d.tail(400).splitlines() if "index %d:" % ix["id"] in l)
        spilled = "(spilled)" in ilog
        builder = "sampled" if "partitions cut at the sample" in ilog else "exact"
        row.update(build_s=round(build_s, 2), build_over_pass=round(build_s / (scan_ms / 1000), 2),
                   index_bytes=ix["bytes"], ratio=round(ix["ratio"], 4), partitions=ix["partitions"],
                   mai_ratio=ix["mai_ratio"], spilled=spilled, builder=builder, build_mem=mem.report())
        pages = store_neurons_bytes(d)
        if pages:
            row["store_bytes"] = int(pages)
            row["store_ratio"] = round(pages / row["full_bytes"], 4)
        log("  build %.1f s (%.2fx the pass), %.4f of full, peak RSS +%s MB%s" % (
            build_s, row["build_over_pass"], ix["ratio"], mem.report()["peak_rss_over_before_mb"],
            " (spilled)" if spilled else ""))
        # queries
        qrows = []
        with B.MemSampler(d.pid) as qmem:
            for kind in ("topk", "knn"):
                for g in GROUPS:
                    if g > ly["neurons"]:
                        continue  # fc1 of the demo CNN has 64
                    lat, comp, exact = [], [], True
                    for i in range(reps):
                        t = rng.randrange(n)
                        if i % 2 == 0:
                            acts = d.ok("GET", "/v1/datasets/ds/inputs/%d/activations?model=m&layer=%s&top=%d"
                                        % (t, layer, g))
                            neurons = [a["neuron"] for a in acts]
                        else:
                            neurons = rng.sample(range(ly["neurons"]), g)
                        body = dict(base, neurons=neurons, k=10)
                        if kind == "knn":
                            body["target"] = t
                        ms, js = query(d, kind, body)
                        lat.append(ms)
                        comp.append(js["stats"]["inputs_computed"])
                        # against scan: two repetitions of each (one where a scan takes over 10 s;
                        # past 30 s, or at 1M inputs, on a filter of 2,000 or 5,000 ids)
                        if i == 0 or (i == 1 and not big and scan_ms < 10000):
                            check = dict(body)
                            if big or scan_ms > 30000:
                                check["filter"] = {"ids": sorted(rng.sample(range(n), 5000 if big else 2000))}
                                _, got = query(d, kind, check)
                            else:
                                got = js
                            _, ref = query(d, kind, dict(check, method="scan"))
                            ok, _, why = B.same_answer(got["results"], ref["results"])
                            if not ok:
                                exact = False
                                log("  MISMATCH %s G=%d: %s" % (kind, g, why))
                    p50 = B.median(lat)
                    qrows.append({"kind": kind, "group": g, "p50_ms": round(p50, 1), "computed_median": B.median(comp),
                                  "speedup": round(scan_ms / p50, 1), "exact": exact})
                    log("  %s G=%d: p50 %.1f ms, %d computed, %.0fx scan%s" % (
                        kind, g, p50, B.median(comp), scan_ms / p50, "" if exact else " NOT EXACT"))
        row["queries"] = qrows
        row["query_mem"] = qmem.report()
    finally:
        d.stop()
        shutil.rmtree(data, ignore_errors=True)
    return row


def markdown(res):
    mach = res["machine"]
    out = ["# Paper scale: wide layers and a million inputs", "",
           "Measured %s on %s (%d cores, %s GB), commit %s; `scripts/bench_scale_models.py`, "
           "daemon defaults (`--build-memory-mb 2048`, `--infer-memory-mb 2048`, batch 64 at most) and "
           "`--cache-mb 0`, each layer in a fresh daemon. Models from `scripts/make_scale_models.py`: "
           "VGG16 (batch norm) at 32x32x3 and ResNet18 at 192x192x3, each trained one short epoch on "
           "Fashion-MNIST resized and tinted to 3 channels (test sets of 10,000 inputs); the demo CNN over "
           "1,000,000 shifted and flipped Fashion-MNIST inputs." % (
               mach["date"], mach["cpu"], mach["cores"], mach["mem_gb"], mach["commit"]), "",
           "## Builds", "",
           "| model | layer | neurons | N | full | index (ratio) | LMDB pages (ratio) | plain pass s | build s | build / pass | partitions | peak RSS over idle MB |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        out.append("| %s | %s | %d | %d | %.2f GB | %.1f MB (%.3f) | %s | %.1f%s | %.1f | %.2f | %s | %s |" % (
            r["model"], r["layer"], r["neurons"], r["n"], r["full_bytes"] / 1e9, r["index_bytes"] / 1e6, r["ratio"],
            "%.1f MB (%.3f)" % (r["store_bytes"] / 1e6, r["store_ratio"]) if r.get("store_bytes") else "-",
            r["pass_s"], " (est.)" if r["pass_estimated"] else "", r["build_s"], r["build_over_pass"],
            r.get("builder", "exact") + (", spilled" if r["spilled"] else ""), r["build_mem"]["peak_rss_over_before_mb"]))
    out += ["", "## Queries (k=10; p50 ms, inputs computed, speedup over the scan of the same run)", "",
            "| model | layer | N | query | G=1 | G=10 | G=30 | G=100 | query peak RSS over idle MB |", "|---|---|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        for kind in ("topk", "knn"):
            cells = []
            for g in GROUPS:
                q = [x for x in r["queries"] if x["kind"] == kind and x["group"] == g]
                if not q:
                    cells.append("-")
                    continue
                q = q[0]
                cells.append("%.1f ms, %d, %.0fx%s" % (q["p50_ms"], q["computed_median"], q["speedup"],
                                                       "" if q["exact"] else " **inexact**"))
            out.append("| %s | %s | %d | %s | %s | %s |" % (r["model"], r["layer"], r["n"], kind, " | ".join(cells),
                                                          r["query_mem"]["peak_rss_over_before_mb"]))
    out += ["", "At N = 1,000,000 the scan (and plain pass) is estimated from a scan over a 50,000-input sample, "
            "scaled by 20; each of those queries' first repetition was checked against a scan on a 5,000-id filter. "
            "At N = 10,000 the first two repetitions of each query (the first only, where a scan takes over 10 s; "
            "on a 2,000-id filter, where it takes over 30 s) were checked against a scan: %s." % (
                "every one checked was equal" if all(q["exact"] for r in res["rows"] for q in r["queries"])
                else "SOME DIFFERED (marked inexact above)")]
    return "\n".join(out) + "\n"


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", default="vgg16,resnet18,cnn1m",
                   help="models, or model:layer for one layer (as vgg16:features.5)")
    p.add_argument("--md-only", action="store_true", help="rewrite the .md from the .json")
    p.add_argument("--reps", type=int, default=6)
    p.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "scale_models"))
    a = p.parse_args()
    rng = random.Random(20261201)
    res = {"machine": B.machine(), "rows": []}
    prev = a.out + ".json"
    runs = []
    for item in a.only.split(","):
        name, _, layer = item.partition(":")
        runs += [(name, l) for l in ([layer] if layer else CONFIGS[name]["layers"])]
    if os.path.exists(prev):  # keep the rows of layers not run this time
        old = json.load(open(prev))
        if a.md_only:
            res = old
            runs = []
        res["rows"] = [r for r in old.get("rows", []) if (r["model"], r["layer"]) not in runs]

    def save():
        order = {k: i for i, k in enumerate(CONFIGS)}
        res["rows"].sort(key=lambda r: (order[r["model"]], CONFIGS[r["model"]]["layers"].index(r["layer"])
                                        if r["layer"] in CONFIGS[r["model"]]["layers"] else 99))
        with open(a.out + ".json", "w") as f:
            json.dump(res, f, indent=1)
        with open(a.out + ".md", "w") as f:
            f.write(markdown(res))

    for name, layer in runs:
        res["rows"].append(run_layer(name, CONFIGS[name], layer, a.reps, rng))
        save()  # a partial run keeps what it measured
    save()
    print(markdown(res))


if __name__ == "__main__":
    main()
