#!/usr/bin/python3
"""The scaling run of make bench: how index build time, index bytes and query
time grow with the number of inputs N (100k, 300k, 1M), on a synthetic
dataset and a tiny model made here.

Model: a TorchScript MLP 16 -> 64 (tanh, layer "h1") -> 32 (layer "h2") -> 10
("out") whose forward returns Dict[str, Tensor], with the archive's
deepeverest.json = {"input_shape":[16]}; fixed seed. Inputs: float32 [N,16]
from a mixture of 10 Gaussians (labels = the component), the first N rows of
one 1,000,000-row draw, so the datasets are nested.

Per N, one fresh daemon with --cache-mb 0: import, a plain inference pass
(a scan query over one neuron), the index build of the layer (time, bytes,
peak RSS), the full materialization (PreprocessAll) when the daemon has it,
then top-k and kNN queries (k=10) for auto, nta, materialized and scan,
answers checked equal across methods.

  /usr/bin/python3 scripts/bench_scale.py [--quick] [--sizes 100000,300000,1000000]
Writes bench/results/scale.{json,md,png} (--quick: bench/tmp/results-quick/).
"""

import argparse
import json
import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_common import ROOT, Daemon, HttpError, MemSampler, machine, median, quantile, same_answer  # noqa: E402

METHODS = ("auto", "nta", "materialized", "scan")
QUERIES = (("topk", 1), ("topk", 3), ("topk", 10), ("knn", 3), ("knn", 10))


def log(*a):
    print(time.strftime("[%H:%M:%S]"), *a, flush=True)


def make_model(path, seed):
    """The tiny MLP as a TorchScript dict-output model with deepeverest.json;
    through scripts/export_model.py (which also writes forward_to) when it
    is there, else scripted directly."""
    import torch
    from typing import Dict

    torch.manual_seed(seed)

    class MLP(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = torch.nn.Linear(16, 64)
            self.h1 = torch.nn.Tanh()
            self.h2 = torch.nn.Linear(64, 32)
            self.relu = torch.nn.ReLU()
            self.out = torch.nn.Linear(32, 10)

        def forward(self, x):
            x = x.reshape(x.shape[0], 16)
            return self.out(self.relu(self.h2(self.h1(self.fc1(x)))))

    class DictMLP(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
            x = x.reshape(x.shape[0], 16)
            h1 = self.m.h1(self.m.fc1(x))
            h2 = self.m.h2(h1)
            return {"h1": h1, "h2": h2, "out": self.m.out(self.m.relu(h2))}

    m = MLP().eval()
    for prm in m.parameters():
        prm.requires_grad_(False)
    try:
        from export_model import export
        export(m, ["h1", "h2", "out"], [16], path)
        return "scripts/export_model.py"
    except Exception as e:  # noqa: BLE001 -- any failure: fall back to scripting it here
        why = "%s: %s" % (type(e).__name__, str(e).splitlines()[0] if str(e) else "")
    sm = torch.jit.script(DictMLP(m))
    torch.jit.save(sm, path, _extra_files={"deepeverest.json": json.dumps({"input_shape": [16]})})
    return "torch.jit.script (export_model.py unusable: %s)" % why


def make_inputs(tmp, sizes, seed):
    import numpy as np
    top = max(sizes)
    paths = {n: (os.path.join(tmp, "synth-%d.npy" % n), os.path.join(tmp, "synth-%d-labels.npy" % n)) for n in sizes}
    if all(os.path.exists(p) and os.path.exists(lp) for p, lp in paths.values()):
        return paths
    rng = np.random.default_rng(seed)
    centers = rng.normal(0.0, 2.0, size=(10, 16))
    labels = rng.integers(0, 10, size=top)
    x = (centers[labels] + rng.normal(0.0, 1.0, size=(top, 16))).astype(np.float32)
    for n, (p, lp) in paths.items():
        np.save(p, np.ascontiguousarray(x[:n]))
        np.save(lp, labels[:n].astype(np.uint8))
    return paths


def wipe(path):
    if os.path.isdir(path):
        for root, dirs, files in os.walk(path, topdown=False):
            for f in files:
                os.unlink(os.path.join(root, f))
            for d in dirs:
                os.rmdir(os.path.join(root, d))
        os.rmdir(path)


def build(d, layer, kind, timeout):
    body = {"model": "mlp", "dataset": "synth", "layers": [layer]}
    if kind == "full":
        body["kind"] = "full"
    with MemSampler(d.pid) as ms:
        t0 = time.perf_counter()
        st, js = d.call("POST", "/v1/indexes", body)
        if 400 <= st < 500:
            return {"skipped": "kind=%s -> %d %s" % (kind, st, json.dumps(js))}
        if st != 202:
            raise HttpError(st, js, "POST /v1/indexes")
        j = d.wait_job(js["job"], timeout=timeout)
        wall = time.perf_counter() - t0
    if j["state"] != "done":
        return {"failed": j.get("error", "failed")}
    ix = d.index(js["id"])
    r = {"wall_s": round(wall, 3), "build_s": ix.get("build_s"), "bytes": ix.get("bytes"),
         "full_materialization_bytes": ix.get("full_materialization_bytes"), "partitions": ix.get("partitions"),
         "mai_ratio": ix.get("mai_ratio")}
    r.update(ms.report())
    return r


def q(d, kind, body):
    t0 = time.perf_counter()
    st, js = d.call("POST", "/v1/query/" + kind, body)
    ms = (time.perf_counter() - t0) * 1e3
    if st != 200:
        raise HttpError(st, js, "POST /v1/query/%s %s" % (kind, json.dumps(body)))
    return ms, js


def run_size(binary, n, paths, model_path, layer, a, failures):
    ddir = os.path.join(a.tmp, "scale-data-%d" % n)
    wipe(ddir)
    extra = ["--cache-mb", "0"] + (["--batch", str(a.daemon_batch)] if a.daemon_batch else [])
    d = Daemon(binary, ddir, extra).start()
    r = {"n": n}
    try:
        m = d.ok("POST", "/v1/models", {"name": "mlp", "path": model_path})
        neurons = next(l["neurons"] for l in m["layers"] if l["name"] == layer)
        t0 = time.perf_counter()
        d.ok("POST", "/v1/datasets", {"name": "synth", "path": paths[n][0], "labels_path": paths[n][1],
                                      "format": "npy", "scale": 1.0, "mean": 0.0, "std": 1.0})
        r["import_s"] = round(time.perf_counter() - t0, 3)
        base = {"model": "mlp", "dataset": "synth", "layer": layer}
        ms, js = q(d, "topk", dict(base, neurons=[0], k=10, method="scan"))
        r["plain_pass_ms"] = ms
        r["plain_pass_inference_ms"] = js["stats"].get("inference_ms")
        r["npi"] = build(d, layer, "npi", a.build_timeout)
        r["full"] = build(d, layer, "full", a.build_timeout)
        if "wall_s" in r["npi"]:
            r["npi"]["ratio_build_over_plain"] = round(r["npi"]["wall_s"] / (ms / 1e3), 3)
            fb = r["npi"]["full_materialization_bytes"] or 4 * neurons * n
            r["npi"]["ratio_bytes_over_full"] = round(r["npi"]["bytes"] / fb, 4)
        methods = [mm for mm in METHODS if mm != "materialized" or "wall_s" in r["full"]]
        log("N=%-8d import %.1f s, plain pass %.0f ms, index build %s s (%s MB, %s of full), full %s"
            % (n, r["import_s"], ms, r["npi"].get("wall_s"), round((r["npi"].get("bytes") or 0) / 1e6, 1),
               r["npi"].get("ratio_bytes_over_full"), r["full"].get("wall_s", r["full"])))
        r["queries"] = []
        for kind, g in QUERIES:
            rng = random.Random("%d:%d:%s:%d" % (a.seed, n, kind, g))
            recs = {mm: [] for mm in methods}
            for i in range(a.reps):
                x = rng.randrange(n)
                group = sorted(rng.sample(range(neurons), g))
                body = dict(base, neurons=group, k=10)
                if kind == "knn":
                    body["target"] = x
                answers = {}
                for mm in methods:
                    if mm == "scan" and i >= a.scan_reps:
                        continue
                    b = dict(body)
                    if mm != "auto":
                        b["method"] = mm
                    ms, js = q(d, kind, b)
                    s = js["stats"]
                    recs[mm].append({"wall_ms": ms, "elapsed_ms": s.get("elapsed_ms"),
                                     "inference_ms": s.get("inference_ms"), "computed": s.get("inputs_computed")})
                    answers[mm] = js["results"]
                ref = next(mm for mm in ("scan", "materialized", "auto", "nta") if mm in answers)
                for mm, ans in answers.items():
                    ok, _, why = same_answer(answers[ref], ans)
                    if not ok:
                        failures.append("N=%d %s G=%d instance %d: %s vs %s: %s" % (n, kind, g, i, mm, ref, why))
            row = {"query": kind, "group": g, "k": 10, "methods": {}}
            for mm, rs in recs.items():
                if rs:
                    w = [x["wall_ms"] for x in rs]
                    row["methods"][mm] = {"n": len(rs), "median_ms": median(w), "p95_ms": quantile(w, 0.95),
                                          "computed_median": median([x["computed"] for x in rs])}
            sc = row["methods"].get("scan")
            if sc:
                row["speedup_vs_scan"] = {mm: sc["median_ms"] / v["median_ms"] for mm, v in row["methods"].items()
                                          if mm != "scan" and v["median_ms"]}
            r["queries"].append(row)
            log("N=%-8d %-4s G=%-2d  %s" % (n, kind, g, "  ".join(
                "%s %.1f ms [%d]" % (mm, v["median_ms"], v["computed_median"]) for mm, v in row["methods"].items())))
    finally:
        d.stop()
        wipe(ddir)
    return r


def markdown(res):
    m = res["meta"]
    lines = ["# deepeverest scaling run (%s)" % ("quick" if m["quick"] else "full"), "",
             "%s; %s, %d cores; commit %s. Synthetic float32 [N,16] inputs (10-Gaussian mixture), TorchScript MLP "
             "16-64-32-10, layer `%s` (%d neurons); daemon `--cache-mb 0`%s; k=10, random groups and targets, "
             "%d instances per query (scan: %d)." % (m["machine"]["date"], m["machine"]["cpu"], m["machine"]["cores"],
                                                      m["machine"]["commit"], m["layer"], m["neurons"],
                                                      " --batch %d" % m["daemon_batch"] if m["daemon_batch"] else "",
                                                      m["reps"], m["scan_reps"]), "",
             "| N | import s | plain pass s | index build s | build / pass | index MB | index / full | peak RSS MB "
             "(+over idle) | full build s | full MB |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in res["sizes"]:
        b, f = r["npi"], r["full"]
        lines.append("| %d | %.1f | %.2f | %s | %s | %.1f | %s | %s (+%s) | %s | %s |" % (
            r["n"], r["import_s"], r["plain_pass_ms"] / 1e3, b.get("wall_s"), b.get("ratio_build_over_plain"),
            (b.get("bytes") or 0) / 1e6, b.get("ratio_bytes_over_full"), b.get("peak_rss_mb"),
            b.get("peak_rss_over_before_mb"), f.get("wall_s", "skipped" if "skipped" in f else "-"),
            "%.1f" % (f["bytes"] / 1e6) if f.get("bytes") else "-"))
    lines += ["", "Query latency, median ms [inputs computed]; speedup of auto over scan:", "",
              "| N | query | group | " + " | ".join(METHODS) + " | auto vs scan |",
              "|---|---|---|" + "---|" * len(METHODS) + "---|"]
    for r in res["sizes"]:
        for row in r["queries"]:
            cells = []
            for mm in METHODS:
                v = row["methods"].get(mm)
                cells.append("-" if not v else "%.1f [%d]" % (v["median_ms"], v["computed_median"]))
            sp = row.get("speedup_vs_scan", {}).get("auto")
            lines.append("| %d | %s | %d | %s | %s |" % (r["n"], "top-k" if row["query"] == "topk" else "kNN",
                                                          row["group"], " | ".join(cells),
                                                          "%.0fx" % sp if sp else "-"))
    if res["failures"]:
        lines += ["", "## FAILURES", ""] + ["- " + f for f in res["failures"]]
    return "\n".join(lines) + "\n"


def chart(res, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib missing: no chart"
    ns = [r["n"] for r in res["sizes"]]
    fig, ax = plt.subplots(1, 3, figsize=(14, 4))
    ax[0].plot(ns, [r["plain_pass_ms"] / 1e3 for r in res["sizes"]], "o-", label="plain inference pass")
    ax[0].plot(ns, [r["npi"].get("wall_s") for r in res["sizes"]], "o-", label="index build")
    if all("wall_s" in r["full"] for r in res["sizes"]):
        ax[0].plot(ns, [r["full"]["wall_s"] for r in res["sizes"]], "o-", label="full materialization")
    ax[0].set_title("build time (s)")
    ax[1].plot(ns, [(r["npi"].get("bytes") or 0) / 1e6 for r in res["sizes"]], "o-", label="index")
    ax[1].plot(ns, [(r["npi"].get("full_materialization_bytes") or 0) / 1e6 for r in res["sizes"]], "o-",
               label="full materialization")
    ax[1].set_title("bytes (MB)")
    for kind, g in QUERIES:
        for mm, style in (("auto", "o-"), ("scan", "s--")):
            ys = [next((row["methods"].get(mm, {}).get("median_ms") for row in r["queries"]
                        if row["query"] == kind and row["group"] == g), None) for r in res["sizes"]]
            if mm == "scan" and (kind, g) != QUERIES[0]:
                continue
            ax[2].plot(ns, ys, style, label="%s %s G=%d" % (mm, kind, g) if mm == "auto" else "scan (top-k G=1)")
    ax[2].set_title("query latency, k=10 (ms)")
    for x in ax:
        x.set_xscale("log")
        x.set_yscale("log")
        x.set_xlabel("N inputs")
        x.grid(alpha=0.3, which="both")
        x.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="sizes 20k,50k, fewer repetitions")
    p.add_argument("--sizes", default=None)
    p.add_argument("--layer", default="h1")
    p.add_argument("--reps", type=int, default=None)
    p.add_argument("--scan-reps", type=int, default=None)
    p.add_argument("--daemon-batch", type=int, default=None, help="deepeverestd --batch (default: the daemon's)")
    p.add_argument("--build", default=os.path.join(ROOT, "build"))
    p.add_argument("--tmp", default=os.path.join(ROOT, "bench", "tmp"))
    p.add_argument("--out", default=None)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--build-timeout", type=float, default=1800)
    a = p.parse_args()
    sizes = [int(s) for s in (a.sizes or ("20000,50000" if a.quick else "100000,300000,1000000")).split(",")]
    a.reps = a.reps or (3 if a.quick else 5)
    a.scan_reps = a.scan_reps or (1 if a.quick else 2)
    if not a.out:
        a.out = os.path.join(ROOT, "bench", "tmp", "results-quick") if a.quick else os.path.join(ROOT, "bench",
                                                                                                  "results")
    binary = os.path.join(a.build, "deepeverestd")
    if not os.path.exists(binary):
        sys.exit("bench_scale: %s is missing (run make first)" % binary)
    tmp = os.path.join(a.tmp, "scale")
    os.makedirs(tmp, exist_ok=True)
    os.makedirs(a.out, exist_ok=True)
    t_start = time.time()
    model_path = os.path.join(tmp, "mlp16.pt")
    how = make_model(model_path, a.seed)
    paths = make_inputs(tmp, sizes, a.seed)
    res = {"meta": {"quick": a.quick, "sizes": sizes, "layer": a.layer, "neurons": 64 if a.layer == "h1" else None,
                    "model_export": how, "reps": a.reps, "scan_reps": a.scan_reps, "daemon_batch": a.daemon_batch, "seed": a.seed,
                    "machine": machine()}, "sizes": [], "failures": []}
    for n in sizes:
        res["sizes"].append(run_size(binary, n, paths, model_path, a.layer, a, res["failures"]))
        with open(os.path.join(a.out, "scale.json"), "w") as f:
            json.dump(res, f, indent=1)
    res["meta"]["duration_s"] = round(time.time() - t_start, 1)
    with open(os.path.join(a.out, "scale.json"), "w") as f:
        json.dump(res, f, indent=1)
    md = markdown(res)
    with open(os.path.join(a.out, "scale.md"), "w") as f:
        f.write(md)
    err = chart(res, os.path.join(a.out, "scale.png"))
    print()
    print(md)
    if err:
        print(err)
    log("scaling run done in %.1f min; results in %s" % (res["meta"]["duration_s"] / 60, a.out))
    if res["failures"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
