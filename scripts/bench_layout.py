"""The demo CNN's tensors channels-last against contiguous, side by side in one
daemon: the same model file registered twice ("cnn" channels-last, "cnn_nchw"
contiguous, POST /v1/models "layout"), the same dataset, alternating A/B:
  - a scan (ReprocessAll: every input computed) per layer, its time per forward;
  - an index build per layer, and default (auto) queries over it, each on both
    models: latency, forwards, inference per forward;
and the answers of both models compared (ids equal; values within 1e-4).
Results: bench/results/layout.{json,md}.

  /usr/bin/python3 scripts/bench_layout.py [--n 70000] [--layers pool1,conv4,fc1] [--reps 2]
"""

import argparse
import json
import os
import random
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
import bench  # noqa: E402
from bench_common import ROOT, Daemon  # noqa: E402

MODELS = (("cnn", "channels-last"), ("cnn_nchw", "contiguous"))


def body(model, layer, neurons, k, method, target=None):
    b = {"model": model, "dataset": "fmnist", "layer": layer, "neurons": neurons, "k": k}
    if method != "auto":
        b["method"] = method
    if target is not None:
        b["target"] = target
    return b


def same_answer(x, y, knn):
    key = "distance" if knn else "score"
    if [r["input"] for r in x["results"]] != [r["input"] for r in y["results"]]:
        return False
    return all(abs(a[key] - b[key]) <= 1e-4 * max(1.0, abs(a[key])) for a, b in zip(x["results"], y["results"]))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=70000)
    p.add_argument("--layers", default="pool1,conv4,fc1")
    p.add_argument("--reps", type=int, default=2, help="scans per layer and model")
    p.add_argument("--queries", type=int, default=12, help="default queries per layer, kind and model")
    p.add_argument("--build", default=os.path.join(ROOT, "build"))
    p.add_argument("--tmp", default=os.path.join(ROOT, "bench", "tmp"))
    p.add_argument("--out", default=os.path.join(ROOT, "bench", "results"))
    a = p.parse_args()
    img, lab = bench.prepare_fmnist(a.tmp, a.n)
    ddir = os.path.join(a.tmp, "data-layout")
    bench.wipe(ddir)
    d = Daemon(os.path.join(a.build, "deepeverestd"), ddir, ["--cache-mb", "0"]).start()
    res = {"meta": {"n": a.n, "machine": bench.machine(), "command": " ".join(sys.argv)}, "layers": {}}
    mismatches = 0
    try:
        for name, layout in MODELS:
            m = d.ok("POST", "/v1/models", {"name": name, "path": bench.MODEL, "layout": layout})
            assert m["layout"] == layout, m
            res["meta"]["batch"] = m["batch"]
        d.ok("POST", "/v1/datasets", dict(name="fmnist", path=img, labels_path=lab, format="npy", **bench.NORM))
        info = {l["name"]: l for l in m["layers"]}
        rng = random.Random(20261203)
        for L in a.layers.split(","):
            row = {"neurons": info[L]["neurons"]}
            grp = sorted(rng.sample(range(info[L]["neurons"]), 3))
            # scans, A/B alternating
            per = {name: [] for name, _ in MODELS}
            answers = {}
            for rep in range(a.reps):
                for name, _ in MODELS:
                    ms, js = bench.run_query(d, "topk", body(name, L, grp, 10, "scan"))
                    s = js["stats"]
                    per[name].append(s["inference_ms"] / max(1, s["forwards"]))
                    answers[name] = js
            if not same_answer(answers["cnn"], answers["cnn_nchw"], False):
                mismatches += 1
                print("layout: scan answers differ at %s" % L, file=sys.stderr)
            row["scan_ms_per_forward"] = {name: round(statistics.median(v), 2) for name, v in per.items()}
            # builds, then default queries on both
            row["build_s"] = {}
            for name, _ in MODELS:
                t0 = time.perf_counter()
                st, js = d.call("POST", "/v1/indexes", {"model": name, "dataset": "fmnist", "layers": [L]})
                job = d.wait_job(js["job"], timeout=1800, poll=0.05)
                assert job["state"] == "done", job
                row["build_s"][name] = round(time.perf_counter() - t0, 2)
            q = {name: {"topk": [], "knn": []} for name, _ in MODELS}
            for i in range(a.queries):
                g = sorted(rng.sample(range(info[L]["neurons"]), rng.choice((1, 3, 10, 30))))
                x = rng.randrange(a.n)
                for kind in ("topk", "knn"):
                    got = {}
                    for name, _ in MODELS:
                        ms, js = bench.run_query(d, kind, body(name, L, g, 10, "auto", x if kind == "knn" else None))
                        s = js["stats"]
                        q[name][kind].append((ms, s["forwards"], s["inference_ms"]))
                        got[name] = js
                    if not same_answer(got["cnn"], got["cnn_nchw"], kind == "knn"):
                        mismatches += 1
                        print("layout: %s answers differ at %s %s" % (kind, L, g), file=sys.stderr)
            row["queries"] = {}
            for name, _ in MODELS:
                row["queries"][name] = {}
                for kind, v in q[name].items():
                    fw = [f for _, f, _ in v]
                    row["queries"][name][kind] = {
                        "median_ms": round(statistics.median(ms for ms, _, _ in v), 2),
                        "forwards": sum(fw),
                        "inference_ms_per_forward": round(sum(i for _, _, i in v) / max(1, sum(fw)), 2)}
            res["layers"][L] = row
            print(L, json.dumps(row), flush=True)
    finally:
        d.stop()
        bench.wipe(ddir)
    res["meta"]["answers_differing"] = mismatches
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "layout.json"), "w") as f:
        json.dump(res, f, indent=1)
    lines = ["# Channels-last against contiguous, one daemon, A/B alternating",
             "", "%d inputs, batch %s, %s; `%s`" % (a.n, res["meta"].get("batch"), res["meta"]["machine"],
                                                   res["meta"]["command"]), "",
             "| layer | scan ms/forward CL | contiguous | ratio | build s CL | contiguous | "
             "auto top-k median ms CL | contiguous | auto kNN median ms CL | contiguous |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for L, r in res["layers"].items():
        s, b, qq = r["scan_ms_per_forward"], r["build_s"], r["queries"]
        lines.append("| %s | %.1f | %.1f | %.2f | %.1f | %.1f | %.1f | %.1f | %.1f | %.1f |" % (
            L, s["cnn"], s["cnn_nchw"], s["cnn"] / s["cnn_nchw"], b["cnn"], b["cnn_nchw"],
            qq["cnn"]["topk"]["median_ms"], qq["cnn_nchw"]["topk"]["median_ms"],
            qq["cnn"]["knn"]["median_ms"], qq["cnn_nchw"]["knn"]["median_ms"]))
    lines += ["", "Answers that differed between the layouts (ids, or values beyond 1e-4): %d" % mismatches, ""]
    with open(os.path.join(a.out, "layout.md"), "w") as f:
        f.write("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
