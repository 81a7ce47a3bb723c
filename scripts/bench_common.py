"""Shared pieces of the benchmarks (scripts/bench.py, scripts/bench_scale.py):
a daemon process with a keep-alive HTTP client, a /proc memory sampler, an
.npy writer that needs no numpy, and small statistics helpers. Stdlib only."""

import http.client
import json
import os
import platform
import socket
import struct
import subprocess
import threading
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))


class HttpError(Exception):
    def __init__(self, status, body, what):
        self.status, self.body = status, body
        super().__init__("%s -> %s %s" % (what, status, body))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Daemon:
    """One deepeverestd over its own data dir, spoken to over one keep-alive
    connection (so a millisecond query is not charged a TCP handshake)."""

    def __init__(self, binary, data_dir, extra=()):
        self.binary, self.data, self.extra = binary, data_dir, list(extra)
        self.proc = self.conn = self.port = None

    def start(self, timeout=120):
        os.makedirs(self.data, exist_ok=True)
        self.port = free_port()
        self.logf = open(os.path.join(self.data, "daemon.log"), "ab")
        self.proc = subprocess.Popen([self.binary, "--data", self.data, "--listen", "127.0.0.1:%d" % self.port]
                                     + self.extra, stdout=self.logf, stderr=subprocess.STDOUT)
        t0 = time.time()
        while time.time() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError("daemon exited with %s:\n%s" % (self.proc.returncode, self.tail()))
            try:
                st, _ = self.call("GET", "/v1/health", timeout=2)
                if st == 200:
                    return self
            except OSError:
                self._drop()
            time.sleep(0.1)
        raise RuntimeError("daemon did not answer in %ss:\n%s" % (timeout, self.tail()))

    @property
    def pid(self):
        return self.proc.pid

    def tail(self, n=30):
        try:
            with open(os.path.join(self.data, "daemon.log"), "rb") as f:
                return b"\n".join(f.read().splitlines()[-n:]).decode(errors="replace")
        except OSError:
            return ""

    def stop(self):
        self._drop()
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if getattr(self, "logf", None):
            self.logf.close()
            self.logf = None

    def _drop(self):
        if self.conn:
            self.conn.close()
        self.conn = None

    def call(self, method, path, body=None, timeout=900):
        """(status, parsed JSON or bytes); reconnects once if the kept-alive
        connection was closed by the server."""
        data = json.dumps(body).encode() if body is not None else None
        hdrs = {"Content-Type": "application/json"} if data is not None else {}
        for attempt in (0, 1):
            try:
                if self.conn is None:
                    self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
                    self.conn.connect()
                    # no Nagle: a small request must not wait for a delayed ACK
                    self.conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self.conn.sock.settimeout(timeout)
                self.conn.request(method, path, body=data, headers=hdrs)
                resp = self.conn.getresponse()
                payload = resp.read()
                if resp.getheader("Connection", "").lower() == "close":
                    self._drop()
                ctype = resp.getheader("Content-Type", "")
                if ctype.startswith("application/json"):
                    return resp.status, json.loads(payload)
                return resp.status, payload
            except (http.client.RemoteDisconnected, http.client.BadStatusLine, BrokenPipeError,
                    ConnectionResetError):
                self._drop()
                if attempt:
                    raise
            except OSError:
                self._drop()
                raise

    def ok(self, method, path, body=None, want=(200, 201, 202), timeout=900):
        st, js = self.call(method, path, body, timeout=timeout)
        if st not in want:
            raise HttpError(st, js, "%s %s" % (method, path))
        return js

    def timed(self, method, path, body=None, timeout=900):
        """(wall ms, status, body)."""
        t0 = time.perf_counter()
        st, js = self.call(method, path, body, timeout=timeout)
        return (time.perf_counter() - t0) * 1e3, st, js

    def wait_job(self, job, timeout=3600, poll=0.05, on_poll=None):
        t0 = time.time()
        while time.time() - t0 < timeout:
            j = self.ok("GET", "/v1/jobs/%d" % job)
            if on_poll:
                on_poll(j)
            if j["state"] in ("done", "failed"):
                return j
            time.sleep(poll)
        raise RuntimeError("job %d did not finish in %ss" % (job, timeout))

    def index(self, ix_id):
        for ix in self.ok("GET", "/v1/indexes")["indexes"]:
            if ix["id"] == ix_id:
                return ix
        raise RuntimeError("index %d not listed" % ix_id)


def proc_status_kb(pid, field):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


class MemSampler:
    """Samples a process's VmRSS every `period` s in a thread; resets its
    VmHWM at start (clear_refs 5, Linux >= 4.0) so the high-water mark read
    at stop belongs to this interval."""

    def __init__(self, pid, period=0.05):
        self.pid, self.period = pid, period
        self.samples = []
        self.hwm_reset = False
        self._stop = threading.Event()

    def __enter__(self):
        try:
            with open("/proc/%d/clear_refs" % self.pid, "w") as f:
                f.write("5")
            self.hwm_reset = True
        except OSError:
            self.hwm_reset = False
        self.base_kb = proc_status_kb(self.pid, "VmRSS")
        self.t0 = time.time()
        self._th = threading.Thread(target=self._run, daemon=True)
        self._th.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            v = proc_status_kb(self.pid, "VmRSS")
            if v is not None:
                self.samples.append((time.time() - self.t0, v))
            self._stop.wait(self.period)

    def __exit__(self, *exc):
        self._stop.set()
        self._th.join()
        self.hwm_kb = proc_status_kb(self.pid, "VmHWM")
        return False

    def report(self):
        peak = max((v for _, v in self.samples), default=None)
        return {
            "rss_before_mb": mb(self.base_kb),
            "peak_rss_mb": mb(peak),
            "peak_rss_over_before_mb": mb(peak - self.base_kb) if peak is not None and self.base_kb else None,
            "vmhwm_mb": mb(self.hwm_kb),
            "vmhwm_is_interval_peak": self.hwm_reset,
            "rss_samples": len(self.samples),
        }


def mb(kb):
    return None if kb is None else round(kb / 1024.0, 1)


def npy_header(descr, shape):
    """The .npy v1.0 header (magic + length + dict, padded to 64 bytes)."""
    shp = "(%s)" % (", ".join(str(s) for s in shape) + ("," if len(shape) == 1 else ""))
    d = "{'descr': '%s', 'fortran_order': False, 'shape': %s, }" % (descr, shp)
    pad = 64 - (10 + len(d) + 1) % 64
    d = d + " " * pad + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(d)) + d.encode("latin1")


def write_npy(path, descr, shape, chunks):
    """Writes an .npy from an iterable of raw byte chunks, atomically."""
    tmp = path + ".part"
    with open(tmp, "wb") as f:
        f.write(npy_header(descr, shape))
        for c in chunks:
            f.write(c)
    os.replace(tmp, path)


def quantile(xs, q):
    """Linear interpolation between closest ranks (numpy's default)."""
    xs = sorted(xs)
    if not xs:
        return None
    pos = (len(xs) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def median(xs):
    return quantile(xs, 0.5)


def machine():
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = proc_meminfo_gb()
    commit = ""
    try:
        commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True).stdout.strip()
        if dirty:
            commit += "+dirty"
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "mem_gb": mem, "kernel": platform.release(),
            "os": platform.platform(), "commit": commit,
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}


def proc_meminfo_gb():
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 1024.0 / 1024.0, 1)
    except OSError:
        pass
    return None


def same_answer(a, b, rel=1e-6):
    """Two result lists agree: the same inputs in the same order and the same
    scores (to rounding of the JSON text). Returns (ok, max |diff|, why)."""
    if len(a) != len(b):
        return False, None, "lengths %d vs %d" % (len(a), len(b))
    worst = 0.0
    for i, (x, y) in enumerate(zip(a, b)):
        vx = x.get("score", x.get("distance"))
        vy = y.get("score", y.get("distance"))
        d = abs(vx - vy)
        worst = max(worst, d)
        if x["input"] != y["input"]:
            return False, worst, "rank %d: input %d (%.9g) vs %d (%.9g)" % (i, x["input"], vx, y["input"], vy)
        if d > rel * max(1.0, abs(vx), abs(vy)):
            return False, worst, "rank %d (input %d): %.9g vs %.9g" % (i, x["input"], vx, vy)
    return True, worst, ""
