#!/usr/bin/python3
"""make bench: deepeverest against ReprocessAll (method "scan": run the model
over every candidate) and PreprocessAll (index kind "full" + method
"materialized": a flat scan over every stored activation), side by side, on
the demo model over Fashion-MNIST train+test (70,000 inputs).

Three parts, each against a real deepeverestd started here on a fresh data
dir under bench/tmp/:
  builds     per layer: a plain inference pass (a scan query over a 1-neuron
             group with --cache-mb 0), the index build and the full
             materialization: time, peak memory (VmRSS sampled every 50 ms,
             VmHWM), bytes; ratios build/plain pass and bytes/full.
  queries    top-k and kNN over groups of 1-30 neurons (the input's most
             active ones, and random ones), k = 10 and 50, with --cache-mb 0
             so every query is cold: median/p95 latency, inputs computed, the
             answers checked equal across methods (the run fails if not).
  workloads  interpretation sessions of 36 queries over three layers, with
             the default cache, total time including index builds or the
             materialization, for every method.
Writes bench/results/{bench.json,bench.md,speedups.png} (with --quick:
bench/tmp/results-quick/) and prints the headline tables.

  /usr/bin/python3 scripts/bench.py [--quick] [--sections builds,queries,workloads]
"""

import argparse
import gzip
import json
import math
import os
import random
import struct
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_common import (ROOT, Daemon, HttpError, MemSampler, machine, median, quantile,  # noqa: E402
                          same_answer, write_npy)

FMNIST = "/usr/share/datasets/fashion-mnist"
MODEL = os.path.join(ROOT, "models", "fmnist_cnn.pt")
NORM = {"scale": 1 / 255, "mean": 0.2860, "std": 0.3530}
FAST = ("auto", "bounds", "nta", "materialized")  # every instance; scan on the first few
ALL_METHODS = FAST + ("scan",)
TOPK_G = (1, 3, 10, 30)
KNN_G = (3, 10, 30)
KS = (10, 50)
SHAPE = None  # (partitions, mai_ratio) of the npi builds; None: the budget's
SELECTIONS = ("top", "random")


def log(*a):
    print(time.strftime("[%H:%M:%S]"), *a, flush=True)


# ---------------------------------------------------------------- data

def read_idx(path, want_magic):
    with gzip.open(path, "rb") as f:
        raw = f.read()
    magic, = struct.unpack(">I", raw[:4])
    if magic != want_magic:
        raise RuntimeError("%s: idx magic %#x, wanted %#x" % (path, magic, want_magic))
    ndim = magic & 0xff
    dims = struct.unpack(">%dI" % ndim, raw[4:4 + 4 * ndim])
    return dims, raw[4 + 4 * ndim:]


def prepare_fmnist(tmp, n):
    """bench/tmp/fmnist-N-{images,labels}.npy: train then test images as one
    uint8 [N,28,28] array (the first N of the 70,000) and their uint8 labels."""
    img = os.path.join(tmp, "fmnist-%d-images.npy" % n)
    lab = os.path.join(tmp, "fmnist-%d-labels.npy" % n)
    if os.path.exists(img) and os.path.exists(lab):
        return img, lab
    os.makedirs(tmp, exist_ok=True)
    images, labels = [], []
    for part in ("train", "t10k"):
        dims, data = read_idx(os.path.join(FMNIST, "%s-images-idx3-ubyte.gz" % part), 0x803)
        ldims, ldata = read_idx(os.path.join(FMNIST, "%s-labels-idx1-ubyte.gz" % part), 0x801)
        if dims[1:] != (28, 28) or ldims[0] != dims[0]:
            raise RuntimeError("unexpected Fashion-MNIST shapes %s %s" % (dims, ldims))
        images.append(data)
        labels.append(ldata)
    images, labels = b"".join(images), b"".join(labels)
    if n > len(labels):
        raise RuntimeError("only %d Fashion-MNIST inputs, %d asked" % (len(labels), n))
    write_npy(img, "|u1", (n, 28, 28), [images[:n * 784]])
    write_npy(lab, "|u1", (n,), [labels[:n]])
    return img, lab


def setup(d, img, lab):
    m = d.ok("POST", "/v1/models", {"name": "cnn", "path": MODEL})
    t0 = time.perf_counter()
    ds = d.ok("POST", "/v1/datasets", dict(name="fmnist", path=img, labels_path=lab, format="npy", **NORM))
    return m, ds, time.perf_counter() - t0


# ---------------------------------------------------------------- queries

def qbody(layer, neurons, k, method, target=None):
    b = {"model": "cnn", "dataset": "fmnist", "layer": layer, "neurons": neurons, "k": k}
    if method != "auto":  # auto = no method field: the daemon's default
        b["method"] = method
    if target is not None:
        b["target"] = target
    return b


def run_query(d, kind, body):
    ms, st, js = d.timed("POST", "/v1/query/" + kind, body)
    if st != 200:
        raise HttpError(st, js, "POST /v1/query/%s %s" % (kind, json.dumps(body)))
    return ms, js


def top_neurons(d, x, layer, g):
    acts = d.ok("GET", "/v1/datasets/fmnist/inputs/%d/activations?model=cnn&layer=%s&top=%d" % (x, layer, g))
    return [a["neuron"] for a in acts]


def rec(ms, js):
    s = js["stats"]
    return {"wall_ms": round(ms, 3), "elapsed_ms": s.get("elapsed_ms"), "inference_ms": s.get("inference_ms"),
            "cell_ms": s.get("cell_ms"), "inputs_computed": s.get("inputs_computed"),
            "fraction_computed": s.get("fraction_computed"), "ran": s.get("method"), "index": s.get("index"),
            "forwards": s.get("forwards")}


def summarize(recs):
    if not recs:
        return None
    wall = [r["wall_ms"] for r in recs]
    el = [r["elapsed_ms"] for r in recs if r["elapsed_ms"] is not None]
    outside = [(r["elapsed_ms"] - r["inference_ms"]) / r["elapsed_ms"] for r in recs
               if r["elapsed_ms"] and r["inference_ms"] is not None]
    return {"n": len(recs), "median_ms": median(wall), "p95_ms": quantile(wall, 0.95),
            "server_median_ms": median(el) if el else None,
            "inputs_computed_median": median([r["inputs_computed"] for r in recs]),
            "fraction_computed_median": median([r["fraction_computed"] for r in recs]),
            "outside_inference_frac_median": median(outside) if outside else None,
            "forwards_median": median([r["forwards"] for r in recs if r.get("forwards") is not None]) if any(
                r.get("forwards") is not None for r in recs) else None,
            "inputs_computed_sum": sum(r["inputs_computed"] or 0 for r in recs),
            "elapsed_ms_sum": sum(r["elapsed_ms"] or 0 for r in recs),
            "inference_ms_sum": sum(r["inference_ms"] or 0 for r in recs),
            "ran": sorted({r["ran"] for r in recs})}


# ---------------------------------------------------------------- part 1: builds

def build(d, layer, kind, timeout):
    """One index (kind npi or full) of one layer in its own job, with memory
    sampled. Returns a record, or {"skipped": why} on a 4xx (kind unknown)."""
    body = {"model": "cnn", "dataset": "fmnist", "layers": [layer]}
    if kind == "full":
        body["kind"] = "full"
    elif SHAPE:
        body["partitions"], body["mai_ratio"] = SHAPE
    with MemSampler(d.pid) as ms:
        t0 = time.perf_counter()
        st, js = d.call("POST", "/v1/indexes", body)
        if 400 <= st < 500:
            return {"skipped": "POST /v1/indexes kind=%s -> %d %s" % (kind, st, json.dumps(js))}
        if st != 202:
            raise HttpError(st, js, "POST /v1/indexes")
        job = d.wait_job(js["job"], timeout=timeout, poll=0.05)
        wall = time.perf_counter() - t0
    if job["state"] != "done":
        return {"failed": job.get("error", "job failed"), "wall_s": wall}
    ix = d.index(js["id"])
    r = {"index_id": ix["id"], "wall_s": round(wall, 3), "build_s": ix.get("build_s"), "bytes": ix.get("bytes"),
         "full_materialization_bytes": ix.get("full_materialization_bytes"), "partitions": ix.get("partitions"),
         "mai_ratio": ix.get("mai_ratio"), "kind": ix.get("kind", kind), "neurons": ix.get("neurons")}
    r.update(ms.report())
    return r


def pair_ratios(n):
    """'median (each pair)' of a build's ratios to its plain pass."""
    r = n.get("ratio_build_over_plain", "-")
    ps = [p["ratio"] for p in n.get("pairs", []) if "ratio" in p]
    return "%s (%s)" % (r, ", ".join("%.2f" % x for x in ps)) if len(ps) > 1 else str(r)


def built(r):
    """Whether build() produced an index (not skipped or failed)."""
    return "wall_s" in r and "failed" not in r and "skipped" not in r


def bytes_over_full(r, info, L, a):
    full = r["full_materialization_bytes"] or (4 * info[L]["neurons"] * a.n)
    return round(r["bytes"] / full, 4) if r["bytes"] is not None else None


def part_builds(d, layers, info, a, res):
    """Per layer, --build-reps pairs of (plain pass, index build) back to back,
    so that both sides of each ratio see the same machine state (on the
    project's VM a plain pass varies by +-20% from one minute to the next);
    the ratio reported is the median of the pairs' ratios, every pair is kept.
    Then one full materialization per layer."""
    out = res.setdefault("builds", {})
    for L in layers:
        pairs, npi = [], None
        for rep in range(a.build_reps):
            if npi is not None and npi.get("index_id") is not None:
                d.call("DELETE", "/v1/indexes/%s" % npi["index_id"])  # keep only the last rep's index
            ms, js = run_query(d, "topk", qbody(L, [0], 10, "scan"))
            plain = rec(ms, js)
            npi = build(d, L, "npi", a.build_timeout)
            pair = {"plain_ms": plain["wall_ms"], "plain_inference_ms": plain["inference_ms"],
                    "build_s": npi.get("wall_s")}
            if built(npi) and plain["wall_ms"]:
                pair["ratio"] = round(npi["wall_s"] / (plain["wall_ms"] / 1e3), 3)
            pairs.append(pair)
            log("pair %d %-6s plain pass %6.0f ms, build %6.1f s, ratio %s" % (rep + 1, L, plain["wall_ms"],
                npi.get("wall_s") or 0, pair.get("ratio", "-")))
            if not built(npi):
                break
        out[L] = {"neurons": info[L]["neurons"], "shape": info[L]["shape"],
                  "plain_pass": {"wall_ms": median([p["plain_ms"] for p in pairs]),
                                 "inference_ms": median([p["plain_inference_ms"] for p in pairs]),
                                 "inputs_computed": a.n, "reps": len(pairs)}}
        r = npi
        if "skipped" in r or "failed" in r:
            out[L]["npi"] = r
            why = r.get("skipped") or r.get("failed")
            log("npi %s: %s" % (L, why))
            res["failures"].append("build npi %s failed: %s" % (L, why))
            continue
        r["pairs"] = pairs
        r["wall_s"] = round(median([p["build_s"] for p in pairs]), 3)
        r["ratio_build_over_plain"] = median([p["ratio"] for p in pairs])
        r["ratio_bytes_over_full"] = bytes_over_full(r, info, L, a)
        out[L]["npi"] = r
        log("npi %-6s build %6.1f s (x%.2f plain pass, median of %d pairs: %s), %6.1f MB (%.3f of full), "
            "peak RSS %s MB (+%s), VmHWM %s MB"
            % (L, r["wall_s"], r["ratio_build_over_plain"], len(pairs), " ".join("%.2f" % p["ratio"] for p in pairs),
               (r["bytes"] or 0) / 1e6, r["ratio_bytes_over_full"] or 0, r["peak_rss_mb"],
               r["peak_rss_over_before_mb"], r["vmhwm_mb"]))
    full_ok = True
    for L in layers:
        if not full_ok:
            out[L]["full"] = {"skipped": "PreprocessAll unavailable (see first layer)"}
            continue
        r = build(d, L, "full", a.build_timeout)
        out[L]["full"] = r
        if "skipped" in r:
            full_ok = False
            log("full %s: skipped: %s" % (L, r["skipped"]))
            continue
        if "failed" in r:
            log("full %s: FAILED: %s" % (L, r["failed"]))
            res["failures"].append("build full %s failed: %s" % (L, r["failed"]))
            continue
        plain_s = out[L]["plain_pass"]["wall_ms"] / 1e3
        r["ratio_build_over_plain"] = round(r["wall_s"] / plain_s, 3) if plain_s else None
        r["ratio_bytes_over_full"] = bytes_over_full(r, info, L, a)
        log("full %-6s build %6.1f s (x%.2f plain pass), %6.1f MB, peak RSS %s MB (+%s), VmHWM %s MB"
            % (L, r["wall_s"], r["ratio_build_over_plain"] or 0, (r["bytes"] or 0) / 1e6, r["peak_rss_mb"],
               r["peak_rss_over_before_mb"], r["vmhwm_mb"]))
    return all("skipped" not in out[L].get("full", {}) and "failed" not in out[L].get("full", {}) for L in layers)


# ---------------------------------------------------------------- part 2: queries

def configs(layers):
    for L in layers:
        for kind, gs in (("topk", TOPK_G), ("knn", KNN_G)):
            for sel in SELECTIONS:
                for g in gs:
                    for k in KS:
                        yield L, kind, sel, g, k


def scan_reps(a, sel, k):
    return a.scan_reps if (k == 10 and sel == "top") else a.scan_reps_other


def cache_drops():
    """How many times the kernel's page cache has been dropped
    (/proc/sys/vm/drop_caches, counted in /proc/vmstat), or None. The
    project's VMs had it dropped 52 times in their first 11 hours, from
    outside: queries after a drop read their index entries from disk."""
    try:
        with open("/proc/vmstat") as f:
            for line in f:
                if line.startswith("drop_pagecache "):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def part_queries(d, layers, info, methods, a, res):
    out = res.setdefault("queries", [])
    dropped_in = []
    total = len(list(configs(layers)))
    for ci, (L, kind, sel, g, k) in enumerate(configs(layers)):
        rng = random.Random("%d:%s:%s:%s:%d:%d" % (a.seed, L, kind, sel, g, k))
        nsc = scan_reps(a, sel, k) if "scan" in methods else 0
        recs = {m: [] for m in methods}
        checked = mismatches = 0
        worst = 0.0
        t0 = time.time()
        drops0 = cache_drops()
        for i in range(a.fast_reps):
            x = rng.randrange(a.n)
            if sel == "top":
                neurons = top_neurons(d, x, L, g)
            else:
                neurons = sorted(rng.sample(range(info[L]["neurons"]), g))
            answers = {}
            for m in methods:
                if m == "scan" and i >= nsc:
                    continue
                ms, js = run_query(d, kind, qbody(L, neurons, k, m, x if kind == "knn" else None))
                recs[m].append(rec(ms, js))
                answers[m] = js["results"]
            ref = next(m for m in ("scan", "materialized", "bounds", "nta", "auto") if m in answers)
            for m, ans in answers.items():
                if m == ref:
                    continue
                ok, diff, why = same_answer(answers[ref], ans)
                checked += 1
                worst = max(worst, diff or 0.0)
                if not ok:
                    mismatches += 1
                    res["failures"].append("answer mismatch %s %s G=%d k=%d sel=%s instance %d (x=%d): %s vs %s: %s"
                                           % (L, kind, g, k, sel, i, x, m, ref, why))
        row = {"layer": L, "query": kind, "selection": sel, "group": g, "k": k, "checked_pairs": checked,
               "mismatches": mismatches, "max_abs_diff": worst,
               "methods": {m: summarize(recs[m]) for m in methods if recs[m]}}
        drops1 = cache_drops()
        if drops0 is not None and drops1 is not None and drops1 > drops0:
            row["page_cache_dropped"] = drops1 - drops0
            dropped_in.append("%s %s %s G=%d" % (L, kind, sel, g))
        sc = row["methods"].get("scan")
        for m in FAST:
            s = row["methods"].get(m)
            if sc and s and s["median_ms"]:
                row.setdefault("speedup_vs_scan", {})[m] = sc["median_ms"] / s["median_ms"]
        out.append(row)
        sp = row.get("speedup_vs_scan", {})
        log("[%2d/%d] %-6s %-4s %-6s G=%-2d k=%-2d  %s  %s  (%.0f s)%s" % (
            ci + 1, total, L, kind, sel, g, k,
            "  ".join("%s %.1f ms" % (m, row["methods"][m]["median_ms"]) for m in methods if m in row["methods"]),
            " ".join("x%.0f(%s)" % (v, m) for m, v in sp.items() if m in ("auto", "nta")),
            time.time() - t0, "  MISMATCH x%d" % mismatches if mismatches else ""))
    if dropped_in:
        res["notes"].append("the page cache was dropped (by something outside the bench: /proc/vmstat "
                            "drop_pagecache) while these configurations ran; their queries, and those "
                            "after them, read index entries from disk: " + "; ".join(dropped_in))


# ---------------------------------------------------------------- part 3: workloads

def session(d, method, layers, a, log_steps):
    """One interpretation session: at each layer, twice: read input x's top-10
    neurons, kNN on its top 3, top-k of each of the three, top-k of the three
    together, kNN on its top 10, then move to x's nearest neighbour. Returns
    (steps, answers) where answers is the list of result id lists."""
    rng = random.Random("%d:session" % a.seed)
    x = rng.randrange(a.n)
    steps, answers = [], []

    def q(kind, L, neurons, target=None):
        ms, js = run_query(d, kind, qbody(L, neurons, 10, method, target))
        r = rec(ms, js)
        r.update(step="%s %s G=%d" % (kind, L, len(neurons)))
        steps.append(r)
        answers.append([e["input"] for e in js["results"]])
        if log_steps:
            log("   %-22s %9.1f ms  computed %-6s index %s" % (r["step"], ms, r["inputs_computed"], r["index"]))
        return js

    for L in layers:
        for _ in range(a.session_steps):
            t0 = time.perf_counter()
            top10 = top_neurons(d, x, L, 10)
            steps.append({"step": "activations %s" % L, "wall_ms": (time.perf_counter() - t0) * 1e3})
            g3 = top10[:3]
            nn = q("knn", L, g3, x)
            for n in g3:
                q("topk", L, [n])
            q("topk", L, g3)
            q("knn", L, top10, x)
            x = nn["results"][0]["input"]
    return steps, answers


def run_session(binary, img, lab, name, method, prebuild, layers, a, extra=()):
    """One session in a fresh daemon: (total s, build s, steps, answers, index bytes at the end)."""
    ddir = os.path.join(a.tmp, "wl-%s" % name)
    wipe(ddir)
    d = Daemon(binary, ddir, a.daemon_args + list(extra)).start()
    try:
        setup(d, img, lab)
        log("workload %s (method %s%s)" % (name, method, ", build %s first" % prebuild if prebuild else ""))
        t0 = time.perf_counter()
        build_s = 0.0
        if prebuild:
            body = {"model": "cnn", "dataset": "fmnist", "layers": sorted(set(layers), key=layers.index)}
            if prebuild == "full":
                body["kind"] = "full"
            js = d.ok("POST", "/v1/indexes", body, want=(202,))
            j = d.wait_job(js["job"], timeout=a.build_timeout)
            if j["state"] != "done":
                raise RuntimeError("workload %s: build failed: %s" % (name, j.get("error")))
            build_s = time.perf_counter() - t0
            log("   build of %s (%s): %.1f s" % (",".join(body["layers"]), prebuild, build_s))
        steps, answers = session(d, method, layers, a, a.verbose)
        total = time.perf_counter() - t0
        ixs = d.ok("GET", "/v1/indexes")["indexes"]
        stored = sum(x["bytes"] for x in ixs if x["state"] == "ready")
        indexed = sorted(x["layer"] for x in ixs if x["state"] == "ready")
    finally:
        d.stop()
        if not a.keep_tmp:
            wipe(ddir)
    return total, build_s, steps, answers, stored, indexed


ORDERS = {
    "deep-to-shallow": None,  # the session layers as given (from the last hidden layer towards the input)
    "shallow-to-deep": "reverse",
    "revisits": "revisit",
}


def order_layers(layers, how):
    if how is None:
        return list(layers)
    if how == "reverse":
        return list(reversed(layers))
    # deepest, shallowest, deepest again, the middle one, the shallowest again
    return [layers[0], layers[-1], layers[0]] + layers[1:-1] + [layers[-1]]


def part_workloads(binary, img, lab, layers, full_ok, a, res):
    out = res.setdefault("workloads", {})
    ref = {}
    for oname, how in ORDERS.items():
        ls = order_layers(layers, how)
        plans = [("deepeverest", "auto", None, ())]
        if a.explicit_workload and oname == "deep-to-shallow":
            plans.append(("deepeverest-explicit", "auto", "npi", ()))
        plans.append(("ReprocessAll", "scan", None, ()))
        if full_ok:
            plans.append(("PreprocessAll", "materialized", "full", ()))
        if oname == "deep-to-shallow":  # the storage and time of each eager-layers policy
            for pol in ("none", "before", "all"):
                plans.append(("deepeverest-eager-%s" % pol, "auto", None, ("--eager-layers", pol)))
        for name, method, prebuild, extra in plans:
            key = "%s/%s" % (oname, name) if oname != "deep-to-shallow" else name
            total, build_s, steps, answers, stored, indexed = run_session(binary, img, lab, key.replace("/", "-"),
                                                                          method, prebuild, ls, a, extra)
            if oname not in ref:
                ref[oname] = answers
            elif answers != ref[oname]:
                bad = [i for i, (u, v) in enumerate(zip(answers, ref[oname])) if u != v]
                res["failures"].append("workload %s: answers differ at queries %s" % (key, bad[:10]))
            inline = sum(s["wall_ms"] for s in steps if s.get("index") == "built") / 1e3
            nq = sum(1 for s in steps if "ran" in s)
            out[key] = {"order": oname, "layers": ls, "method": method, "total_s": round(total, 3),
                        "prebuild_s": round(build_s, 3), "inline_build_queries_s": round(inline, 3), "queries": nq,
                        "requests": len(steps), "query_s": round(sum(s["wall_ms"] for s in steps) / 1e3, 3),
                        "index_bytes_at_end": stored, "indexed_layers": indexed, "steps": steps,
                        "daemon_args": list(extra)}
            log("workload %-36s total %7.1f s (prebuild %.1f s, queries that built an index %.1f s), %d queries, "
                "%.1f MB of indexes (%s)" % (key, total, build_s, inline, nq, stored / 1e6, ",".join(indexed)))


def wipe(path):
    if os.path.isdir(path):
        for root, dirs, files in os.walk(path, topdown=False):
            for f in files:
                os.unlink(os.path.join(root, f))
            for dd in dirs:
                os.rmdir(os.path.join(root, dd))
        os.rmdir(path)


# ---------------------------------------------------------------- targets, report

def targets(res):
    t = []
    b = res.get("builds", {})
    for L, r in b.items():
        npi = r.get("npi", {})
        if "ratio_build_over_plain" in npi:
            t.append({"target": "index build time / plain inference pass, %s" % L, "value": npi["ratio_build_over_plain"],
                      "goal": "<= 1.3", "ok": npi["ratio_build_over_plain"] <= 1.3})
        if "ratio_bytes_over_full" in npi:
            t.append({"target": "index bytes / full materialization, %s" % L, "value": npi["ratio_bytes_over_full"],
                      "goal": "<= 0.20", "ok": npi["ratio_bytes_over_full"] <= 0.20})
    q10 = [q for q in res.get("queries", []) if q["k"] == 10 and "speedup_vs_scan" in q]
    for kind in ("topk", "knn"):
        rows = [q for q in q10 if q["query"] == kind and "auto" in q["speedup_vs_scan"]]
        if rows:
            worst = min(rows, key=lambda q: q["speedup_vs_scan"]["auto"])
            n_ok = sum(q["speedup_vs_scan"]["auto"] >= 100 for q in rows)
            nta = [q["speedup_vs_scan"]["nta"] for q in rows if "nta" in q["speedup_vs_scan"]]
            t.append({"target": "median speedup of auto over ReprocessAll, %s k=10, groups 1-30 (%d/%d configs >= 100x; "
                      "worst %s %s G=%d)" % (kind, n_ok, len(rows), worst["layer"], worst["selection"], worst["group"]),
                      "value": round(worst["speedup_vs_scan"]["auto"], 1), "goal": ">= 100 (every config)",
                      "ok": n_ok == len(rows),
                      "median_over_configs": round(median([q["speedup_vs_scan"]["auto"] for q in rows]), 1),
                      "nta_worst": round(min(nta), 1) if nta else None,
                      "nta_median_over_configs": round(median(nta), 1) if nta else None})
    nta = [q["methods"]["nta"] for q in res.get("queries", []) if "nta" in q["methods"]
           and q["methods"]["nta"]["outside_inference_frac_median"] is not None]
    outs = [s["outside_inference_frac_median"] for s in nta]
    if outs:
        el = sum(s["elapsed_ms_sum"] for s in nta)
        inf = sum(s["inference_ms_sum"] for s in nta)
        worst = max(range(len(outs)), key=lambda i: outs[i])
        t.append({"target": "time outside inference in an NTA query, %% of its latency (elapsed_ms - inference_ms): "
                  "worst configuration median; median over configurations %.1f%%; over all NTA time %.1f%%"
                  % (100 * median(outs), 100 * (el - inf) / el if el else 0), "value": round(100 * max(outs), 1),
                  "goal": "<= 15 %", "ok": max(outs) <= 0.15, "all_time_pct": round(100 * (el - inf) / el, 1) if el else None,
                  "worst_config_nta_median_ms": nta[worst]["median_ms"]})
    # the latency floor: a default query at k=10, groups 1-30, against the
    # forwards it ran times one full forward of that layer in this run
    b = res.get("builds", {})
    floor_rows = []
    for q in res.get("queries", []):
        au = q["methods"].get("auto")
        L = q["layer"]
        if q["k"] != 10 or not au or au.get("forwards_median") is None or L not in b:
            continue
        nf = math.ceil(res["meta"]["n"] / res["meta"].get("batch", 64))
        t_fwd = b[L]["plain_pass"]["wall_ms"] / nf
        floor = 1.5 * au["forwards_median"] * t_fwd + 3
        floor_rows.append((au["median_ms"] <= floor, au["median_ms"], floor, q))
    if floor_rows:
        n_ok = sum(r[0] for r in floor_rows)
        worst = max(floor_rows, key=lambda r: r[1] / r[2])
        t.append({"target": "default query median latency <= 1.5 x (forwards it ran x one full forward) + 3 ms, "
                  "k=10, groups 1-30 (%d/%d configs; worst %s %s %s G=%d: %.1f ms vs %.1f ms)"
                  % (n_ok, len(floor_rows), worst[3]["layer"], worst[3]["query"], worst[3]["selection"],
                     worst[3]["group"], worst[1], worst[2]),
                  "value": round(worst[1] / worst[2], 2), "goal": "<= 1 (every config)", "ok": n_ok == len(floor_rows)})
    for m, goal in (("auto", 0.20), ("nta", 0.20)):
        # a configuration answered from the index alone (no forward) is all
        # "outside inference" by definition: the latency floor (3 ms) judges it
        every = [q["methods"][m] for q in res.get("queries", []) if m in q["methods"]
                 and q["methods"][m]["outside_inference_frac_median"] is not None]
        rows = [s for s in every if s.get("forwards_median")]
        outs = [s["outside_inference_frac_median"] for s in rows]
        if outs:
            el = sum(s["elapsed_ms_sum"] for s in rows)
            inf = sum(s["inference_ms_sum"] for s in rows)
            t.append({"target": "time outside inference, %s, %% of its latency (elapsed_ms - inference_ms): worst "
                      "configuration median; median over configurations %.1f%%; over all its time %.1f%% "
                      "(%d configurations that ran a forward; %d answered from the index alone)"
                      % (m, 100 * median(outs), 100 * (el - inf) / el if el else 0, len(rows), len(every) - len(rows)),
                      "value": round(100 * max(outs), 1),
                      "goal": "<= %d %%" % (100 * goal), "ok": max(outs) <= goal})
    # NTA's cost per input computed against scan's, over every configuration
    nta = [q["methods"]["nta"] for q in res.get("queries", []) if "nta" in q["methods"]]
    sc = [q["methods"]["scan"] for q in res.get("queries", []) if "scan" in q["methods"]]
    if nta and sc:
        per_nta = sum(x["elapsed_ms_sum"] for x in nta) / max(1, sum(x["inputs_computed_sum"] for x in nta))
        per_scan = sum(x["elapsed_ms_sum"] for x in sc) / max(1, sum(x["inputs_computed_sum"] for x in sc))
        t.append({"target": "NTA server time per input computed / scan's (%.1f vs %.1f us)" % (1e3 * per_nta,
                                                                                              1e3 * per_scan),
                  "value": round(per_nta / per_scan, 2), "goal": "<= 1.2", "ok": per_nta / per_scan <= 1.2})
    w = res.get("workloads", {})
    for oname in ORDERS:
        pre = "" if oname == "deep-to-shallow" else oname + "/"
        de = w.get(pre + "deepeverest", {}).get("total_s")
        others = {k: w[pre + k]["total_s"] for k in ("ReprocessAll", "PreprocessAll") if "total_s" in w.get(pre + k, {})}
        if de is None or not others:
            continue
        ex = w.get(pre + "deepeverest-explicit", {}).get("total_s")
        t.append({"target": "workload %s (%s): deepeverest with incremental indexing%s below %s" % (
            oname, " -> ".join(w[pre + "deepeverest"]["layers"]),
            "; with the layers indexed up front: %.1f s" % ex if ex else "",
            " and ".join("%s %.1f s" % kv for kv in others.items())),
            "value": de, "goal": "< %s" % min(others.values()), "ok": all(de < v for v in others.values())})
    return t


def fmt_ms(v):
    if v is None:
        return "-"
    return "%.0f" % v if v >= 100 else "%.1f" % v if v >= 1 else "%.2f" % v


def fmt_x(v):
    return "-" if v is None else "%.0fx" % v if v >= 10 else "%.1fx" % v


def headline(res):
    """Per query kind and group size at k=10: medians over the layers and
    group selections of each configuration's median."""
    qs = [q for q in res.get("queries", []) if q["k"] == 10]
    if not qs:
        return []
    meths = [m for m in ("auto", "nta", "materialized", "scan") if any(m in q["methods"] for q in qs)]
    names = {"auto": "auto", "nta": "NTA", "materialized": "PreprocessAll", "scan": "ReprocessAll"}
    lines = ["## Headline: k=10, median latency in ms over %d layers x 2 group choices (top-active, random)"
             % len(res["meta"]["layers"]), "",
             "| query | group | " + " | ".join(names[m] + " ms" for m in meths) +
             " | auto speedup (min-max) | NTA speedup (min-max) | auto computed | NTA computed |",
             "|---|---|" + "---|" * len(meths) + "---|---|---|---|"]
    for kind, gs in (("topk", TOPK_G), ("knn", KNN_G)):
        for g in gs:
            rows = [q for q in qs if q["query"] == kind and q["group"] == g]
            if not rows:
                continue
            cells = []
            for m in meths:
                v = [q["methods"][m]["median_ms"] for q in rows if m in q["methods"]]
                cells.append(fmt_ms(median(v)) if v else "-")

            def rng(m):
                v = [q["speedup_vs_scan"][m] for q in rows if m in q.get("speedup_vs_scan", {})]
                return "%s (%s-%s)" % (fmt_x(median(v)), fmt_x(min(v)), fmt_x(max(v))) if v else "-"

            def comp(m):
                v = [q["methods"][m]["fraction_computed_median"] for q in rows if m in q["methods"]]
                return "%.2f%%" % (100 * median(v)) if v else "-"
            lines.append("| %s | %d | %s | %s | %s | %s | %s |" % ("top-k" if kind == "topk" else "kNN", g,
                                                                  " | ".join(cells), rng("auto"), rng("nta"),
                                                                  comp("auto"), comp("nta")))
    return lines + [""]


def markdown(res, short=False):
    m = res["meta"]
    lines = ["# deepeverest benchmark (%s)" % ("quick" if m["quick"] else "full"), "",
             "%s; %s, %d cores, %s GB RAM; commit %s; %d inputs of Fashion-MNIST (train+test) on the demo CNN; "
             "`%s`." % (m["machine"]["date"], m["machine"]["cpu"], m["machine"]["cores"], m["machine"]["mem_gb"],
                        m["machine"]["commit"], m["n"], m["command"]),
             "Latencies are wall-clock at the client (loopback HTTP, keep-alive), medians over %d query instances per "
             "configuration (ReprocessAll: %d at k=10 on the top-activation groups, %d elsewhere), daemon `--cache-mb 0` "
             "so that every query is cold. auto = the default method (cell bounds over the index); "
             "ReprocessAll = `scan`; PreprocessAll = `materialized` over an index of kind `full`."
             % (m["fast_reps"], m["scan_reps"], m["scan_reps_other"]), ""]
    t = res.get("targets", [])
    if t:
        lines += ["## Targets", "", "| target | measured | goal | met |", "|---|---|---|---|"]
        for x in t:
            extra = ""
            if "median_over_configs" in x:
                extra = " (median over configs %sx; NTA: worst %sx, median %sx)" % (
                    x["median_over_configs"], x["nta_worst"], x["nta_median_over_configs"])
            lines.append("| %s | %s%s | %s | %s |" % (x["target"], x["value"], extra, x["goal"],
                                                       "yes" if x["ok"] else "**no**"))
        lines.append("")
    lines += headline(res)
    b = res.get("builds", {})
    if b:
        lines += ["## Index build vs. full materialization (PreprocessAll)", "",
                  "| layer | neurons | plain pass s | index build s | build / pass (pairs) | index MB | index / full | "
                  "peak RSS MB (+over idle) | VmHWM MB | full build s | full MB | full peak RSS MB (+over idle) |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for L, r in b.items():
            n, f = r.get("npi", {}), r.get("full", {})
            lines.append("| %s %s | %d | %.1f | %s | %s | %s | %s | %s (+%s) | %s | %s | %s | %s |" % (
                L, r["shape"], r["neurons"], r["plain_pass"]["wall_ms"] / 1e3,
                "%.1f" % n["wall_s"] if "wall_s" in n else "-", pair_ratios(n),
                "%.1f" % (n["bytes"] / 1e6) if n.get("bytes") is not None else "-", n.get("ratio_bytes_over_full", "-"),
                n.get("peak_rss_mb", "-"), n.get("peak_rss_over_before_mb", "-"), n.get("vmhwm_mb", "-"),
                "%.1f" % f["wall_s"] if "wall_s" in f and "failed" not in f else "skipped" if "skipped" in f else "-",
                "%.1f" % (f["bytes"] / 1e6) if f.get("bytes") is not None else "-",
                "%s (+%s)" % (f.get("peak_rss_mb"), f.get("peak_rss_over_before_mb")) if "peak_rss_mb" in f else "-"))
        lines.append("")
    qs = [] if short else res.get("queries", [])
    meths = [mm for mm in ALL_METHODS if any(mm in q["methods"] for q in qs)]
    for k in KS:
        rows = [q for q in qs if q["k"] == k]
        if not rows:
            continue
        lines += ["## Queries, k=%d: median ms (p95) [inputs computed]" % k, "",
                  "| layer | query | group | " + " | ".join(meths) + " | auto vs scan | nta vs scan |",
                  "|---|---|---|" + "---|" * len(meths) + "---|---|"]
        for q in rows:
            cells = []
            for mm in meths:
                s = q["methods"].get(mm)
                cells.append("-" if not s else "%s (%s) [%d]" % (fmt_ms(s["median_ms"]), fmt_ms(s["p95_ms"]),
                                                                 s["inputs_computed_median"]))
            sp = q.get("speedup_vs_scan", {})
            lines.append("| %s | %s | %d %s | %s | %s | %s |" % (
                q["layer"], "top-k" if q["query"] == "topk" else "kNN", q["group"],
                "top-active" if q["selection"] == "top" else "random", " | ".join(cells),
                fmt_x(sp.get("auto")), fmt_x(sp.get("nta"))))
        lines.append("")
    w = res.get("workloads", {})
    if w:
        lines += ["## Workloads: interpretation sessions (12 queries + 2 activation reads per layer visit), default "
                  "cache, each in a fresh daemon", "",
                  "| session | method | layers | total s | of which index build / materialization s | queries | "
                  "indexes at the end MB (layers) |", "|---|---|---|---|---|---|---|"]
        for name, r in w.items():
            if "skipped" in r:
                lines.append("| %s | skipped: %s | | | | | |" % (name, r["skipped"]))
                continue
            lines.append("| %s | %s | %s | %.1f | %.1f | %d | %.1f (%s) |" % (
                r.get("order", ""), name.split("/")[-1] + (" " + " ".join(r["daemon_args"]) if r.get("daemon_args") else ""),
                " -> ".join(r.get("layers", [])), r["total_s"], r["prebuild_s"] + r["inline_build_queries_s"],
                r["queries"], r.get("index_bytes_at_end", 0) / 1e6, ", ".join(r.get("indexed_layers", []))))
        lines.append("")
    if res.get("notes"):
        lines += ["## Notes", ""] + ["- " + n for n in res["notes"]] + [""]
    if res.get("failures"):
        lines += ["## FAILURES", ""] + ["- " + f for f in res["failures"]] + [""]
    return "\n".join(lines)


def chart(res, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is missing (apt-get install -y python3-matplotlib): no chart"
    qs = [q for q in res.get("queries", []) if q["k"] == 10 and "speedup_vs_scan" in q]
    if not qs:
        return "no speedups to chart"
    layers = res["meta"]["layers"]
    meths = [m for m in ("auto", "nta", "materialized") if any(m in q["speedup_vs_scan"] for q in qs)]
    colors = {"auto": "#1f77b4", "nta": "#ff7f0e", "materialized": "#7f7f7f"}
    fig, axes = plt.subplots(len(layers), 2, figsize=(13, 3.2 * len(layers)), squeeze=False, sharey=True)
    for r, L in enumerate(layers):
        for c, sel in enumerate(SELECTIONS):
            ax = axes[r][c]
            rows = [q for q in qs if q["layer"] == L and q["selection"] == sel]
            xs = range(len(rows))
            w = 0.8 / max(1, len(meths))
            for i, m in enumerate(meths):
                ax.bar([x + (i - (len(meths) - 1) / 2) * w for x in xs],
                       [q["speedup_vs_scan"].get(m, 0) for q in rows], w, label=m, color=colors[m])
            ax.axhline(100, color="red", lw=0.8, ls="--")
            ax.set_yscale("log")
            ax.set_xticks(list(xs))
            ax.set_xticklabels(["%s\nG=%d" % ("top-k" if q["query"] == "topk" else "kNN", q["group"]) for q in rows],
                               fontsize=8)
            ax.set_title("%s, %s groups, k=10" % (L, "top-active" if sel == "top" else "random"), fontsize=10)
            if c == 0:
                ax.set_ylabel("speedup over ReprocessAll")
            ax.grid(axis="y", which="major", alpha=0.3)
    axes[0][0].legend(fontsize=8, loc="upper right")
    fig.suptitle("deepeverest: median query speedup over ReprocessAll (scan), %d inputs, --cache-mb 0 "
                 "(dashed: 100x)" % res["meta"]["n"], fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def save(res, outdir):
    os.makedirs(outdir, exist_ok=True)
    res["targets"] = targets(res)
    with open(os.path.join(outdir, "bench.json"), "w") as f:
        json.dump(res, f, indent=1)
    with open(os.path.join(outdir, "bench.md"), "w") as f:
        f.write(markdown(res))


# ---------------------------------------------------------------- main

def main():
    global KS, SHAPE  # --ks and --shape replace the defaults
    global MODEL
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="10,000 inputs, fewer repetitions (a smoke test)")
    p.add_argument("--build", default=os.path.join(ROOT, "build"), help="dir holding deepeverestd")
    p.add_argument("--out", default=None, help="results dir (default bench/results; --quick: bench/tmp/results-quick)")
    p.add_argument("--tmp", default=os.path.join(ROOT, "bench", "tmp"))
    p.add_argument("--model", default=None, help="the demo model (TorchScript)")
    p.add_argument("--sections", default="builds,queries,workloads")
    p.add_argument("--layers", default="pool1,conv4,fc1")
    p.add_argument("--n", type=int, default=None, help="inputs (default 70000; --quick 10000)")
    p.add_argument("--fast-reps", type=int, default=None, help="instances per configuration (default 7; quick 3)")
    p.add_argument("--scan-reps", type=int, default=None,
                   help="ReprocessAll instances at k=10 on top-activation groups (default 3; quick 1)")
    p.add_argument("--scan-reps-other", type=int, default=None,
                   help="ReprocessAll instances on the other configurations (default 1)")
    p.add_argument("--build-reps", type=int, default=None,
                   help="(plain pass, index build) pairs per layer (default 3; quick 1)")
    p.add_argument("--plain-reps", dest="build_reps", type=int, help=argparse.SUPPRESS)  # its old name
    p.add_argument("--session-steps", type=int, default=2, help="inputs visited per layer in a workload session")
    p.add_argument("--no-explicit-workload", dest="explicit_workload", action="store_false",
                   help="skip the deepeverest workload variant with one explicit build up front")
    p.add_argument("--seed", type=int, default=20240601)
    p.add_argument("--build-timeout", type=float, default=1800)
    p.add_argument("--daemon-arg", action="append", default=[], help="extra deepeverestd argument (repeatable)")
    p.add_argument("--keep-tmp", action="store_true", help="keep the data dirs under bench/tmp")
    p.add_argument("--methods", default=",".join(ALL_METHODS),
                   help="query methods to run (the speedups need scan; default all)")
    p.add_argument("--ks", default=",".join(str(k) for k in KS), help="k values of the query section")
    p.add_argument("--shape", default=None, help="P,MAI: the npi builds' partitions and mai_ratio (default: the budget's)")
    p.add_argument("-v", "--verbose", action="store_true")
    a = p.parse_args()
    KS = tuple(int(x) for x in a.ks.split(","))
    if a.shape:
        P, mai = a.shape.split(",")
        SHAPE = (int(P), float(mai))
    a.methods = [m for m in a.methods.split(",") if m]
    for m in a.methods:
        if m not in ALL_METHODS:
            sys.exit("bench: unknown method %s (known: %s)" % (m, ", ".join(ALL_METHODS)))
    a.n = a.n or (10000 if a.quick else 70000)
    a.fast_reps = a.fast_reps or (3 if a.quick else 7)
    a.scan_reps = a.scan_reps if a.scan_reps is not None else (1 if a.quick else 3)
    a.scan_reps_other = a.scan_reps_other if a.scan_reps_other is not None else 1
    a.build_reps = max(1, a.build_reps or (1 if a.quick else 3))
    if not a.out:
        a.out = os.path.join(ROOT, "bench", "tmp", "results-quick") if a.quick else os.path.join(ROOT, "bench", "results")
    a.daemon_args = list(a.daemon_arg)
    sections = set(a.sections.split(","))
    layers = a.layers.split(",")
    binary = os.path.join(a.build, "deepeverestd")
    MODEL = a.model or MODEL
    for f in (binary, MODEL):
        if not os.path.exists(f):
            sys.exit("bench: %s is missing (run make first)" % f)

    t_start = time.time()
    res = {"meta": {"quick": a.quick, "n": a.n, "layers": layers, "fast_reps": a.fast_reps, "scan_reps": a.scan_reps,
                    "scan_reps_other": a.scan_reps_other, "seed": a.seed, "machine": machine(),
                    "command": " ".join([os.path.basename(sys.argv[0])] + sys.argv[1:]),
                    "topk_groups": TOPK_G, "knn_groups": KNN_G, "ks": KS, "shape": SHAPE},
           "failures": [], "notes": []}
    img, lab = prepare_fmnist(a.tmp, a.n)
    log("dataset %s (%d inputs)" % (img, a.n))

    full_ok = False
    if sections & {"builds", "queries"}:
        ddir = os.path.join(a.tmp, "data-cold")
        wipe(ddir)
        d = Daemon(binary, ddir, ["--cache-mb", "0"] + a.daemon_args).start()
        try:
            model, ds, imp_s = setup(d, img, lab)
            info = {l["name"]: l for l in model["layers"]}
            res["meta"]["batch"] = model.get("batch", 64)
            for L in layers:
                if L not in info:
                    sys.exit("bench: the model has no layer %s (has %s)" % (L, ", ".join(info)))
            res["meta"]["import_s"] = round(imp_s, 2)
            res["meta"]["health"] = d.ok("GET", "/v1/health")
            log("daemon up (%s), dataset imported in %.1f s" % (res["meta"]["health"].get("device"), imp_s))
            # builds are needed by the queries: run them whenever queries run
            full_ok = part_builds(d, layers, info, a, res)
            if not full_ok:
                res["notes"].append("PreprocessAll skipped: the daemon does not accept index kind 'full' "
                                    "(or its build failed); see builds.*.full")
            save(res, a.out)
            methods = [m for m in list(FAST) + ["scan"] if m in a.methods]
            if full_ok:
                st, js = d.call("POST", "/v1/query/topk", qbody(layers[0], [0], 10, "materialized"))
                if st != 200:
                    full_ok = False
                    res["notes"].append("method 'materialized' answered %d %s: PreprocessAll queries skipped"
                                        % (st, json.dumps(js)))
            if not full_ok and "materialized" in methods:
                methods.remove("materialized")
            if "queries" in sections:
                part_queries(d, layers, info, methods, a, res)
                save(res, a.out)
        finally:
            d.stop()
            if not a.keep_tmp:
                wipe(ddir)
    if "workloads" in sections:
        if "builds" not in sections:
            full_ok = True  # let the workload find out
        # a session starts at the last hidden layer and moves towards the input
        res["meta"]["session_layers"] = list(reversed(layers))
        part_workloads(binary, img, lab, res["meta"]["session_layers"], full_ok, a, res)
    res["meta"]["duration_s"] = round(time.time() - t_start, 1)
    save(res, a.out)
    err = chart(res, os.path.join(a.out, "speedups.png"))
    if err:
        res["notes"].append(err)
        save(res, a.out)
    print()
    print(markdown(res, short=True))
    log("per-configuration tables: %s" % os.path.join(a.out, "bench.md"))
    log("results in %s (%.1f min)" % (a.out, res["meta"]["duration_s"] / 60))
    if res["failures"]:
        log("FAILED: %d problem(s), see above" % len(res["failures"]))
        sys.exit(1)


if __name__ == "__main__":
    main()
