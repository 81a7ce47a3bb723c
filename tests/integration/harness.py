"""Integration test harness: starts the real deepeverestd on a free loopback
port with a fresh data dir, talks real HTTP to it (stdlib only: urllib), and
runs a module's test_* functions in order with a Check-style summary line
("100%: Checks: N, Failures: F, Errors: E") that tests/run_all.sh counts."""

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.error
import urllib.request

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
MODEL = os.path.join(ROOT, "models", "fmnist_cnn.pt")
FMNIST = "/usr/share/datasets/fashion-mnist"
TEST_IMAGES = os.path.join(FMNIST, "t10k-images-idx3-ubyte.gz")
TEST_LABELS = os.path.join(FMNIST, "t10k-labels-idx1-ubyte.gz")
TRAIN_IMAGES = os.path.join(FMNIST, "train-images-idx3-ubyte.gz")
TRAIN_LABELS = os.path.join(FMNIST, "train-labels-idx1-ubyte.gz")
# The demo model's normalization (models/fmnist_cnn.json).
NORM = {"scale": 1 / 255, "mean": 0.2860, "std": 0.3530}

_args = None


def args():
    global _args
    if _args is None:
        p = argparse.ArgumentParser()
        p.add_argument("--build", default="build")
        p.add_argument("-k", default=None, help="run only tests whose name contains this")
        _args, _ = p.parse_known_args()
    return _args


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Daemon:
    """One deepeverestd process over a data dir that outlives restarts."""

    def __init__(self, data_dir=None, extra=()):
        self.tmp = None
        if data_dir is None:
            self.tmp = tempfile.TemporaryDirectory(prefix="de-it-")
            data_dir = self.tmp.name
        self.data = data_dir
        self.extra = list(extra)
        self.proc = None
        self.port = None
        self.log = None

    def command(self, binary):
        return [binary, "--data", self.data, "--listen", "127.0.0.1:%d" % self.port] + self.extra

    def start(self, extra=None, timeout=60, same_port=False):
        if extra is not None:
            self.extra = list(extra)
        if not (same_port and self.port):
            self.port = free_port()
        binary = os.path.join(ROOT, args().build, "deepeverestd")
        self.log = open(os.path.join(self.data, "daemon.log"), "ab")
        self.proc = subprocess.Popen(self.command(binary), stdout=self.log, stderr=subprocess.STDOUT)
        t0 = time.time()
        while time.time() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError("daemon exited with %s; log:\n%s" % (self.proc.returncode, self.tail()))
            try:
                st, _ = self.call("GET", "/v1/health", timeout=2)
                if st == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError("daemon did not answer in %ss; log:\n%s" % (timeout, self.tail()))

    def tail(self, n=40):
        try:
            with open(os.path.join(self.data, "daemon.log"), "rb") as f:
                return b"\n".join(f.read().splitlines()[-n:]).decode(errors="replace")
        except OSError:
            return ""

    def stop(self, sig=signal.SIGTERM, timeout=60):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise RuntimeError("daemon did not stop on signal %d" % sig)
        rc = self.proc.returncode if self.proc else None
        self.proc = None
        if self.log:
            self.log.close()
            self.log = None
        return rc

    def kill(self):
        return self.stop(signal.SIGKILL)

    def close(self):
        try:
            self.stop()
        finally:
            if self.tmp:
                self.tmp.cleanup()

    def url(self, path):
        return "http://127.0.0.1:%d%s" % (self.port, path)

    def call(self, method, path, body=None, raw=None, headers=None, timeout=600):
        """Returns (status, parsed JSON or raw bytes)."""
        data = raw
        hdrs = dict(headers or {})
        if body is not None:
            data = json.dumps(body).encode()
            hdrs.setdefault("Content-Type", "application/json")
        req = urllib.request.Request(self.url(path), data=data, method=method, headers=hdrs)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                status, payload, ctype = resp.status, resp.read(), resp.headers.get("Content-Type", "")
        except urllib.error.HTTPError as e:
            status, payload, ctype = e.code, e.read(), e.headers.get("Content-Type", "")
        if ctype.startswith("application/json"):
            return status, json.loads(payload)
        return status, payload

    def ok(self, method, path, body=None, want=(200, 201, 202), **kw):
        st, js = self.call(method, path, body, **kw)
        if st not in want:
            raise AssertionError("%s %s -> %s %s" % (method, path, st, js))
        return js

    def setup_demo(self, model="cnn", dataset="fmnist", train=False):
        """Registers the committed model and imports the Fashion-MNIST test set."""
        self.ok("POST", "/v1/models", {"name": model, "path": MODEL})
        body = {"name": dataset, "path": TRAIN_IMAGES if train else TEST_IMAGES,
                "labels_path": TRAIN_LABELS if train else TEST_LABELS, "format": "idx"}
        body.update(NORM)
        return self.ok("POST", "/v1/datasets", body)

    def wait_job(self, job, timeout=600):
        t0 = time.time()
        while time.time() - t0 < timeout:
            j = self.ok("GET", "/v1/jobs/%d" % job)
            if j["state"] in ("done", "failed"):
                return j
            time.sleep(0.2)
        raise AssertionError("job %d did not finish" % job)


class Coordinator(Daemon):
    """deepeverestd --coordinator in front of shard Daemons (no data of its own;
    its data dir holds only its log)."""

    def __init__(self, shards, extra=()):
        super().__init__(extra=extra)
        self.shards = shards

    def command(self, binary):
        urls = ",".join("http://127.0.0.1:%d" % d.port for d in self.shards)
        return [binary, "--coordinator", "--shards", urls, "--listen", "127.0.0.1:%d" % self.port] + self.extra


def expect_error(resp, status, code=None, mentions=None):
    st, js = resp
    assert st == status, "wanted %d, got %d %s" % (status, st, js)
    assert isinstance(js, dict) and "error" in js, "no JSON error body: %r" % (js,)
    assert js["error"].get("message"), js
    if code:
        assert js["error"]["code"] == code, "wanted code %s, got %s" % (code, js["error"])
    if mentions:
        assert mentions in js["error"]["message"], "message %r does not name %r" % (js["error"]["message"], mentions)


def run(module_globals):
    tests = [(n, f) for n, f in module_globals.items() if n.startswith("test_") and callable(f)]
    tests.sort(key=lambda nf: nf[1].__code__.co_firstlineno)
    if args().k:
        tests = [(n, f) for n, f in tests if args().k in n]
    fails = errors = 0
    for name, fn in tests:
        t0 = time.time()
        try:
            fn()
            print("PASS %-40s %.1fs" % (name, time.time() - t0), flush=True)
        except AssertionError:
            fails += 1
            print("FAIL %s\n%s" % (name, traceback.format_exc()), flush=True)
        except Exception:
            errors += 1
            print("ERROR %s\n%s" % (name, traceback.format_exc()), flush=True)
    n = len(tests)
    pct = 100 * (n - fails - errors) // n if n else 0
    print("%d%%: Checks: %d, Failures: %d, Errors: %d" % (pct, n, fails, errors))
    sys.exit(1 if fails or errors or not n else 0)


def schema_errors(doc, schema, value, where="$"):
    """Where value breaks schema, an OpenAPI 3.0 schema of doc (the subset the
    project's document uses: $ref, type, nullable, enum, properties, required,
    additionalProperties false, items, oneOf). Empty when it conforms."""
    if "$ref" in schema:
        target = doc
        for part in schema["$ref"][2:].split("/"):
            target = target[part]
        return schema_errors(doc, target, value, where)
    if value is None:
        return [] if schema.get("nullable") else ["%s: null" % where]
    if "oneOf" in schema:
        fits = [s for s in schema["oneOf"] if not schema_errors(doc, s, value, where)]
        return [] if len(fits) == 1 else ["%s: matches %d of oneOf" % (where, len(fits))]
    t = schema.get("type")
    kinds = {"object": dict, "array": list, "string": str, "boolean": bool}
    if t in kinds and not isinstance(value, kinds[t]):
        return ["%s: %r is not %s" % (where, value, t)]
    if t == "integer" and (isinstance(value, bool) or not isinstance(value, int)):
        return ["%s: %r is not an integer" % (where, value)]
    if t == "number" and (isinstance(value, bool) or not isinstance(value, (int, float))):
        return ["%s: %r is not a number" % (where, value)]
    if "enum" in schema and value not in schema["enum"]:
        return ["%s: %r not in %s" % (where, value, schema["enum"])]
    errs = []
    if t == "object":
        props = schema.get("properties", {})
        errs += ["%s: missing %s" % (where, k) for k in schema.get("required", []) if k not in value]
        for k, v in value.items():
            if k in props:
                errs += schema_errors(doc, props[k], v, "%s.%s" % (where, k))
            elif schema.get("additionalProperties") is False:
                errs.append("%s: undocumented field %s" % (where, k))
    if t == "array" and "items" in schema:
        for i, v in enumerate(value[:50]):
            errs += schema_errors(doc, schema["items"], v, "%s[%d]" % (where, i))
    return errs


def check_reply(doc, method, path_template, status, value):
    """Asserts that a JSON reply conforms to what doc says path_template
    answers with status."""
    op = doc["paths"][path_template][method.lower()]
    resp = op["responses"][str(status)]
    if "$ref" in resp:
        target = doc
        for part in resp["$ref"][2:].split("/"):
            target = target[part]
        resp = target
    schema = resp["content"]["application/json"]["schema"]
    errs = schema_errors(doc, schema, value)
    assert not errs, "%s %s %d: %s" % (method, path_template, status, errs[:5])
