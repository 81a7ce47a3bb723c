"""Foundation over real HTTP: health, models, datasets (path and streamed
imports), inputs, PNG thumbnails, activations against Python's reference
values, bad input, persistence across a restart."""

import gzip
import json
import os
import struct
import sys
import tempfile

sys.path.insert(0, os.path.dirname(__file__))
import harness as H  # noqa: E402

D = None  # the shared daemon
FIXTURE = os.path.join(H.ROOT, "tests", "fixtures", "fmnist_cnn_acts.json")


def npy_bytes(shape, dtype, payload):
    """A .npy v1 file (written here, independently of the daemon's reader)."""
    header = "{'descr': '%s', 'fortran_order': False, 'shape': (%s), }" % (
        dtype, "".join("%d, " % s for s in shape) if len(shape) == 1 else ", ".join(map(str, shape)))
    pad = 64 - (10 + len(header) + 1) % 64
    header = header + " " * pad + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode() + payload


def test_start():
    global D
    D = H.Daemon().start()
    h = D.ok("GET", "/v1/health")
    assert h["status"] == "ok" and h["device"] in ("cpu", "cuda") and h["version"]


def test_register_model():
    m = D.ok("POST", "/v1/models", {"name": "cnn", "path": H.MODEL})
    assert m["name"] == "cnn" and m["input_shape"] == [1, 28, 28]
    layers = {l["name"]: l for l in m["layers"]}
    assert list(layers) == ["conv1", "conv2", "pool1", "conv3", "pool2", "conv4", "fc1", "logits"], list(layers)
    assert layers["pool2"]["shape"] == [64, 7, 7] and layers["pool2"]["neurons"] == 3136
    assert layers["fc1"]["shape"] == [64] and layers["logits"]["neurons"] == 10
    assert D.ok("GET", "/v1/models/cnn")["layers"] == m["layers"]
    assert [x["name"] for x in D.ok("GET", "/v1/models")["models"]] == ["cnn"]


def test_model_errors():
    H.expect_error(D.call("POST", "/v1/models", {"name": "cnn", "path": H.MODEL}), 409, "model_exists")
    bad = os.path.join(H.ROOT, "tests", "fixtures", "not_torchscript.pt")
    H.expect_error(D.call("POST", "/v1/models", {"name": "bad", "path": bad}), 422, "invalid_model")
    H.expect_error(D.call("POST", "/v1/models", {"name": "x", "path": "/nonexistent.pt"}), 422, "invalid_path")
    H.expect_error(D.call("POST", "/v1/models", raw=b"{not json", headers={"Content-Type": "application/json"}),
                   400, "invalid_json")
    H.expect_error(D.call("POST", "/v1/models", {"name": 5, "path": H.MODEL}), 400, mentions="name")
    H.expect_error(D.call("POST", "/v1/models", {"name": "a/b", "path": H.MODEL}), 422, mentions="name")
    H.expect_error(D.call("GET", "/v1/models/nope"), 404, "unknown_model")
    H.expect_error(D.call("DELETE", "/v1/models/nope"), 404, "unknown_model")
    assert [x["name"] for x in D.ok("GET", "/v1/models")["models"]] == ["cnn"], "a failed POST left a model"


def test_import_fashion_mnist_test_set():
    body = {"name": "fmnist", "path": H.TEST_IMAGES, "labels_path": H.TEST_LABELS, "format": "idx"}
    body.update(H.NORM)
    ds = D.ok("POST", "/v1/datasets", body)
    assert ds["count"] == 10000 and ds["shape"] == [1, 28, 28] and ds["dtype"] == "uint8", ds
    assert ds["labels"] is True
    with gzip.open(H.TEST_LABELS) as f:
        labels = f.read()[8:]
    for i in (0, 1, 9999):
        inp = D.ok("GET", "/v1/datasets/fmnist/inputs/%d" % i)
        assert inp["label"] == labels[i] and inp["shape"] == [1, 28, 28], inp


def test_input_errors():
    H.expect_error(D.call("GET", "/v1/datasets/fmnist/inputs/10000"), 404)
    H.expect_error(D.call("GET", "/v1/datasets/fmnist/inputs/-1"), 404)
    H.expect_error(D.call("GET", "/v1/datasets/fmnist/inputs/abc"), 404)
    H.expect_error(D.call("GET", "/v1/datasets/nope/inputs/0"), 404, "unknown_dataset")


def test_png_thumbnail():
    st, png = D.call("GET", "/v1/datasets/fmnist/inputs/3/image.png")
    assert st == 200 and png[:8] == b"\x89PNG\r\n\x1a\n", png[:16]
    w, h = struct.unpack(">II", png[16:24])
    assert (w, h) == (112, 112), (w, h)  # 28x28 upscaled 4x


def test_png_thumbnails_cached_per_registration():
    # rendered once, then served from the cache: the same bytes; another
    # size or input is another entry
    first = D.call("GET", "/v1/datasets/fmnist/inputs/3/image.png")[1]
    assert D.call("GET", "/v1/datasets/fmnist/inputs/3/image.png")[1] == first
    st, small = D.call("GET", "/v1/datasets/fmnist/inputs/3/image.png?size=56")
    assert st == 200 and struct.unpack(">II", small[16:24]) == (56, 56) and small != first
    assert D.call("GET", "/v1/datasets/fmnist/inputs/4/image.png")[1] != first
    # a dataset deleted and registered again under its name shows its new
    # pictures, never the old registration's
    pics = []
    for fill in (40, 200):
        payload = bytes([fill] * 64 + [255 - fill] * 64)
        D.ok("PUT", "/v1/datasets/pics", raw=npy_bytes((2, 1, 8, 8), "|u1", payload))
        st, png = D.call("GET", "/v1/datasets/pics/inputs/0/image.png")
        assert st == 200 and png[:8] == b"\x89PNG\r\n\x1a\n"
        assert D.call("GET", "/v1/datasets/pics/inputs/0/image.png")[1] == png
        pics.append(png)
        assert D.ok("DELETE", "/v1/datasets/pics")["deleted"]
    assert pics[0] != pics[1]


def test_activations_match_python_reference():
    with open(FIXTURE) as f:
        fx = json.load(f)
    checked = 0
    for item in fx["inputs"]:
        i = item["id"]
        for layer in ("pool2", "fc1"):
            ref = item["activations"][layer]
            acts = D.ok("GET", "/v1/datasets/fmnist/inputs/%d/activations?model=cnn&layer=%s&top=%d"
                        % (i, layer, len(ref)))
            assert len(acts) == len(ref)
            got = {a["neuron"]: a["value"] for a in acts}
            worst = max(abs(got[n] - ref[n]) for n in range(len(ref)))
            assert worst <= 1e-4, "input %d layer %s differs by %g" % (i, layer, worst)
            # descending order, coords consistent with the flat index
            vals = [a["value"] for a in acts]
            assert vals == sorted(vals, reverse=True)
            checked += 1
    assert checked >= 10
    top = D.ok("GET", "/v1/datasets/fmnist/inputs/0/activations?model=cnn&layer=pool2&top=5")
    assert len(top) == 5 and all(len(a["coord"]) == 3 for a in top)
    c = top[0]["coord"]
    assert top[0]["neuron"] == c[0] * 49 + c[1] * 7 + c[2]


def test_activation_errors():
    H.expect_error(D.call("GET", "/v1/datasets/fmnist/inputs/0/activations?model=cnn&layer=nope"), 404,
                   "unknown_layer")
    H.expect_error(D.call("GET", "/v1/datasets/fmnist/inputs/0/activations?model=nope&layer=fc1"), 404,
                   "unknown_model")
    H.expect_error(D.call("GET", "/v1/datasets/fmnist/inputs/0/activations?layer=fc1"), 400)


def test_put_npy_upload_and_shape_mismatch():
    # 5 float32 inputs of [1,8,8]: a dataset the demo model cannot take.
    payload = struct.pack("<%df" % (5 * 64), *[float(i % 7) for i in range(5 * 64)])
    ds = D.ok("PUT", "/v1/datasets/small", raw=npy_bytes((5, 1, 8, 8), "<f4", payload))
    assert ds["count"] == 5 and ds["shape"] == [1, 8, 8] and ds["dtype"] == "float32", ds
    H.expect_error(D.call("GET", "/v1/datasets/small/inputs/0/activations?model=cnn&layer=fc1"), 422,
                   "shape_mismatch")
    H.expect_error(D.call("PUT", "/v1/datasets/small", raw=npy_bytes((5, 1, 8, 8), "<f4", payload)), 409)
    assert D.ok("DELETE", "/v1/datasets/small")["deleted"]
    H.expect_error(D.call("GET", "/v1/datasets/small"), 404)


def test_failed_imports_leave_nothing():
    payload = bytes(range(256)) * 10
    truncated = npy_bytes((100, 28, 28), "|u1", payload)  # says 78400 bytes, has 2560
    H.expect_error(D.call("PUT", "/v1/datasets/broken", raw=truncated), 422, "invalid_dataset")
    H.expect_error(D.call("GET", "/v1/datasets/broken"), 404)
    with tempfile.NamedTemporaryFile(suffix=".npy", delete=False) as f:
        f.write(truncated)
    try:
        H.expect_error(D.call("POST", "/v1/datasets", {"name": "broken2", "path": f.name}), 422)
    finally:
        os.unlink(f.name)
    H.expect_error(D.call("GET", "/v1/datasets/broken2"), 404)
    names = [d["name"] for d in D.ok("GET", "/v1/datasets")["datasets"]]
    assert names == ["fmnist"], names


def test_bad_requests():
    H.expect_error(D.call("GET", "/v1/nothing"), 404, "not_found")
    H.expect_error(D.call("PATCH", "/v1/models"), 405)
    H.expect_error(D.call("POST", "/v1/datasets", {"name": "x"}), 400, mentions="path")
    H.expect_error(D.call("POST", "/v1/datasets", {"name": "x", "path": H.TEST_IMAGES, "std": 0}), 422,
                   mentions="std")
    # A body over --max-body-mb (64 MiB) is refused from its Content-Length,
    # before the client has to send it.
    import socket
    with socket.create_connection(("127.0.0.1", D.port)) as s:
        s.sendall(b"POST /v1/models HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: %d\r\n\r\n{" % (65 << 20))
        reply = s.recv(4096).decode()
    assert reply.startswith("HTTP/1.1 413"), reply
    assert "body_too_large" in reply, reply
    # a large body under the cap is read whole and parsed
    big = b"{" + b" " * (1 << 20) + b"}"
    st, _ = D.call("POST", "/v1/models", raw=big, headers={"Content-Type": "application/json"})
    assert st == 400  # an empty object: missing fields
    assert D.ok("GET", "/v1/health")["status"] == "ok"


def test_metrics():
    st, text = D.call("GET", "/metrics")
    assert st == 200
    text = text.decode()
    assert "deepeverest_cache_hits_total" in text and "deepeverest_inputs_computed_total" in text


def test_restart_keeps_everything():
    before = D.ok("GET", "/v1/datasets/fmnist")
    a0 = D.ok("GET", "/v1/datasets/fmnist/inputs/7/activations?model=cnn&layer=fc1&top=64")
    assert D.stop() == 0, "SIGTERM should exit 0"
    D.start()
    assert D.ok("GET", "/v1/datasets/fmnist") == before
    assert [m["name"] for m in D.ok("GET", "/v1/models")["models"]] == ["cnn"]
    a1 = D.ok("GET", "/v1/datasets/fmnist/inputs/7/activations?model=cnn&layer=fc1&top=64")
    assert a0 == a1


def test_delete_model():
    assert D.ok("DELETE", "/v1/models/cnn")["deleted"]
    H.expect_error(D.call("GET", "/v1/models/cnn"), 404)
    D.close()


if __name__ == "__main__":
    H.run(globals())
