#!/usr/bin/python3
"""Trains the demo CNN on Fashion-MNIST (Debian's dataset-fashion-mnist) and
exports it to models/fmnist_cnn.pt in the model convention, with
models/fmnist_cnn.json (accuracy, normalization, layers) and the reference
activations tests/fixtures/fmnist_cnn_acts.json that the integration test
compares the daemon with. Run with Debian's python3 (python3-torch):
    /usr/bin/python3 scripts/train_demo_model.py"""

import gzip
import json
import os
import struct
import sys
import time

import torch
import torch.nn as nn

sys.path.insert(0, os.path.dirname(__file__))
from export_model import export  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
FM = "/usr/share/datasets/fashion-mnist"
SCALE, MEAN, STD = 1 / 255, 0.2860, 0.3530
LAYERS = ["conv1", "conv2", "pool1", "conv3", "pool2", "conv4", "fc1", "logits"]
FIXTURE_IDS = [0, 1, 2, 7, 123, 4567, 9999]


def read_idx(path):
    with gzip.open(path) as f:
        data = f.read()
    ndim = data[3]
    dims = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    return torch.frombuffer(bytearray(data[4 + 4 * ndim:]), dtype=torch.uint8).reshape(dims)


class Act(nn.Module):
    """conv + ReLU as one named layer, so the layer's neurons are post-activation."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return torch.relu(self.inner(x))


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = Act(nn.Conv2d(1, 16, 3, padding=1))
        self.conv2 = Act(nn.Conv2d(16, 32, 3, padding=1))
        self.pool1 = nn.MaxPool2d(2)
        self.conv3 = Act(nn.Conv2d(32, 64, 3, padding=1))
        self.pool2 = nn.MaxPool2d(2)
        self.conv4 = Act(nn.Conv2d(64, 64, 3, padding=1))
        self.flat = nn.Flatten()
        self.fc1 = Act(nn.Linear(3136, 64))
        self.logits = nn.Linear(64, 10)

    def forward(self, x):
        x = self.pool1(self.conv2(self.conv1(x)))
        x = self.conv4(self.pool2(self.conv3(x)))
        return self.logits(self.fc1(self.flat(x)))


def normalize(u8):
    return ((u8.float() * SCALE) - MEAN) / STD


def main():
    torch.manual_seed(0)
    torch.set_num_threads(2)
    xtr = normalize(read_idx(FM + "/train-images-idx3-ubyte.gz")).unsqueeze(1)
    ytr = read_idx(FM + "/train-labels-idx1-ubyte.gz").long()
    xte_u8 = read_idx(FM + "/t10k-images-idx3-ubyte.gz")
    xte = normalize(xte_u8).unsqueeze(1)
    yte = read_idx(FM + "/t10k-labels-idx1-ubyte.gz").long()
    net = Net()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    epochs, t0 = 2, time.time()
    # Trained weights are kept between runs (export-only reruns skip training).
    cache = os.environ.get("DE_STATE_CACHE", "/tmp/deepeverest_fmnist_cnn_state.pt")
    if os.path.exists(cache) and "--retrain" not in sys.argv:
        net.load_state_dict(torch.load(cache))
        epochs = 0
        print("weights from", cache)
    for ep in range(epochs):
        perm = torch.randperm(len(xtr))
        net.train()
        for i in range(0, len(xtr), 128):
            idx = perm[i:i + 128]
            opt.zero_grad()
            loss = nn.functional.cross_entropy(net(xtr[idx]), ytr[idx])
            loss.backward()
            opt.step()
        print("epoch %d done, loss %.3f, %.0f s" % (ep + 1, loss.item(), time.time() - t0), flush=True)
    if epochs:
        torch.save(net.state_dict(), cache)
        epochs_trained, train_secs = epochs, time.time() - t0
    else:  # keep the figure of the run that trained
        epochs_trained, train_secs = 2, None
        try:
            with open(os.path.join(ROOT, "models", "fmnist_cnn.json")) as f:
                train_secs = json.load(f).get("train_seconds")
        except (OSError, ValueError):
            pass
    net.eval()
    with torch.no_grad():
        pred = torch.cat([net(xte[i:i + 1000]).argmax(1) for i in range(0, len(xte), 1000)])
    acc = (pred == yte).float().mean().item()
    secs = time.time() - t0
    print("test accuracy %.4f" % acc)
    out = os.path.join(ROOT, "models", "fmnist_cnn.pt")
    export(net, LAYERS, [1, 28, 28], out)
    m = torch.jit.load(out)
    shapes = {}
    with torch.no_grad():
        for k, v in m(torch.zeros(1, 1, 28, 28)).items():
            shapes[k] = list(v.shape[1:])
    meta = {"accuracy": round(acc, 4), "epochs": epochs_trained, "train_seconds": round(train_secs, 1) if train_secs else None,
            "normalization": {"scale": SCALE, "mean": MEAN, "std": STD},
            "layers": [{"name": k, "shape": s} for k, s in shapes.items()],
            "torch": torch.__version__, "params": sum(p.numel() for p in net.parameters()),
            "bytes": os.path.getsize(out)}
    with open(os.path.join(ROOT, "models", "fmnist_cnn.json"), "w") as f:
        json.dump(meta, f, indent=1)
    # Reference activations, computed here from the saved TorchScript in a
    # batch of 64 (the daemon's batch size) to compare the daemon against.
    xs = xte[FIXTURE_IDS]
    batch = torch.zeros(64, 1, 28, 28)
    batch[:len(FIXTURE_IDS)] = xs
    with torch.no_grad():
        acts = m(batch)
    fixture = {"normalization": meta["normalization"], "inputs": []}
    for j, i in enumerate(FIXTURE_IDS):
        fixture["inputs"].append({
            "id": i, "label": int(yte[i]),
            "activations": {l: [float("%.7g" % v) for v in acts[l][j].flatten().tolist()] for l in ("pool2", "fc1", "logits")}})
    os.makedirs(os.path.join(ROOT, "tests", "fixtures"), exist_ok=True)
    with open(os.path.join(ROOT, "tests", "fixtures", "fmnist_cnn_acts.json"), "w") as f:
        json.dump(fixture, f)
    print(json.dumps(meta))


if __name__ == "__main__":
    main()
