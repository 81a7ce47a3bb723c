#!/usr/bin/python3
"""Reference answers of the interpretation workflow, computed here with
Python torch on the committed demo model (models/fmnist_cnn.pt) over the
Fashion-MNIST test set, for tests/integration/test_workflow.py to hold the
daemon against:
  - the predicted class (argmax of the logits) of every input, and the
    inputs whose two best logits are closer than 1e-4 (an argmax there may
    differ in the last bit of arithmetic, so the test skips them);
  - attributions: gradients of a group's aggregate with respect to the
    input (plain and SmoothGrad with the daemon's noise generator), Grad-CAM
    maps and channel maps.
Writes tests/fixtures/fmnist_cnn_workflow.json. Needs python3-torch:
    /usr/bin/python3 scripts/make_workflow_fixtures.py"""

import gzip
import json
import math
import os
import struct

import torch
from typing import Dict

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
FM = "/usr/share/datasets/fashion-mnist"
SCALE, MEAN, STD = 1 / 255, 0.2860, 0.3530
MASK = (1 << 64) - 1


def read_idx(path):
    with gzip.open(path) as f:
        data = f.read()
    ndim = data[3]
    dims = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    return torch.frombuffer(bytearray(data[4 + 4 * ndim:]), dtype=torch.uint8).reshape(dims)


def normalized(raw):
    """x = (raw * scale - mean) / std, in float32 as the daemon computes it."""
    x = raw.to(torch.float32) * torch.tensor(SCALE, dtype=torch.float32)
    return (x - torch.tensor(MEAN, dtype=torch.float32)) / torch.tensor(STD, dtype=torch.float32)


class Noise:
    """The daemon's SmoothGrad noise (server/attribution.c): splitmix64,
    53-bit uniforms, Box-Muller (the cosine branch), one normal per draw."""

    def __init__(self, seed):
        self.s = seed & MASK

    def next64(self):
        self.s = (self.s + 0x9E3779B97F4A7C15) & MASK
        z = self.s
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
        return z ^ (z >> 31)

    def uniform(self):  # (0, 1]
        return ((self.next64() >> 11) + 1) * (1.0 / 9007199254740992.0)

    def normal(self):
        u1, u2 = self.uniform(), self.uniform()
        return math.sqrt(-2.0 * math.log(u1)) * math.cos(2.0 * math.pi * u2)


def group_target(layer_out, neurons, agg, weights):
    flat = layer_out.reshape(layer_out.shape[0], -1)[:, neurons]
    if agg == "max":
        return flat.max(dim=1).values
    if agg == "min":
        return flat.min(dim=1).values
    w = torch.tensor(weights if weights else [1.0] * len(neurons), dtype=torch.float32)
    s = (flat * w).sum(dim=1)
    return s / len(neurons) if agg == "mean" else s


class Frozen(torch.nn.Module):
    """A model one of whose layers does not depend differentiably on the
    input: attribution there must be refused (tests/fixtures/nograd_model.pt)."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(784, 8)

    def forward(self, x) -> Dict[str, torch.Tensor]:
        h = torch.relu(self.fc(x.flatten(1)))
        return {"fc": h, "frozen": h.detach() * 2.0}


def write_nograd_model():
    torch.manual_seed(3)
    m = torch.jit.script(Frozen().eval())
    path = os.path.join(ROOT, "tests", "fixtures", "nograd_model.pt")
    torch.jit.save(m, path, _extra_files={"deepeverest.json": json.dumps({"input_shape": [1, 28, 28]})})


def main():
    write_nograd_model()
    m = torch.jit.load(os.path.join(ROOT, "models", "fmnist_cnn.pt"))
    m.eval()
    raw = read_idx(os.path.join(FM, "t10k-images-idx3-ubyte.gz"))
    x = normalized(raw).reshape(-1, 1, 28, 28)
    preds, close = [], []
    with torch.no_grad():
        for i in range(0, x.shape[0], 64):
            lg = m(x[i:i + 64])["logits"]
            top = lg.topk(2, dim=1).values
            preds += lg.argmax(dim=1).tolist()
            close += [i + j for j in range(lg.shape[0]) if float(top[j, 0] - top[j, 1]) < 1e-4]

    cases = [
        # plain gradients at inputs where they do not hang on the last bits of
        # the forward (checked below): at most inputs a max-pool window holds
        # two near-equal values (the background), and which one takes the
        # gradient changes with the batch the forward ran in and the CPU --
        # measured up to 1.6% of the map's largest value between two hosts
        {"input": 119, "layer": "fc1", "neurons": [3, 17, 40], "agg": "sum", "method": "gradient"},
        {"input": 98, "layer": "logits", "neurons": [2], "agg": "sum", "method": "gradient"},
        {"input": 4567, "layer": "conv4", "neurons": "top3", "agg": "max", "method": "gradient"},
        {"input": 126, "layer": "fc1", "neurons": [1, 2, 5, 8], "agg": "sum", "weights": [1, -0.5, 2, -1],
         "method": "gradient"},
        {"input": 7, "layer": "fc1", "neurons": [3, 17, 40], "agg": "mean", "method": "gradient", "samples": 8,
         "noise": 0.2, "seed": 42},
        {"input": 7, "layer": "logits", "neurons": "predicted", "agg": "sum", "method": "gradcam"},
        {"input": 321, "layer": "conv4", "neurons": [49 * 5 + 10, 49 * 9 + 3], "agg": "sum", "method": "gradcam",
         "cam_layer": "conv3"},
        {"input": 321, "layer": "conv3", "neurons": [196 * 4 + 17], "agg": "sum", "method": "channel"},
    ]
    layer_names = ["conv1", "conv2", "pool1", "conv3", "pool2", "conv4", "fc1", "logits"]
    out = []
    for c in cases:
        xi = x[c["input"]:c["input"] + 1]
        if c["neurons"] == "top3":  # the input's most active neurons: a gradient that is not 0
            with torch.no_grad():
                c["neurons"] = sorted(m(xi)[c["layer"]].flatten().topk(3).indices.tolist())
        elif c["neurons"] == "predicted":  # the logit of the input's predicted class
            c["neurons"] = [preds[c["input"]]]
        if c["method"] == "channel":
            with torch.no_grad():
                a = m(xi)[c["layer"]][0]
            hw = a.shape[1] * a.shape[2]
            chans = sorted({n // hw for n in c["neurons"]})
            vals = sum(a[ch].double() for ch in chans)
            out.append(dict(c, shape=list(vals.shape), values=vals.flatten().tolist()))
            continue
        if c["method"] == "gradcam":
            cam_layer = c.get("cam_layer")
            if cam_layer is None:  # the deepest [C,H,W] layer at or before the group's
                li = layer_names.index(c["layer"])
                with torch.no_grad():
                    shapes = {k: v.shape for k, v in m(xi).items()}
                cam_layer = [n for n in layer_names[:li + 1] if len(shapes[n]) == 4][-1]
            xg = xi.clone()
            outs = m(xg)
            a = outs[cam_layer]
            t = group_target(outs[c["layer"]], c["neurons"], c["agg"], c.get("weights")).sum()
            g, = torch.autograd.grad(t, [a])
            a, g = a[0].double(), g[0].double()
            alpha = g.mean(dim=(1, 2))
            cam = torch.relu((alpha[:, None, None] * a).sum(dim=0))
            out.append(dict(c, cam_layer=cam_layer, shape=list(cam.shape), values=cam.flatten().tolist()))
            continue
        samples = c.get("samples", 0)
        if samples:
            rng = Noise(c.get("seed", 0))
            sigma = c["noise"] * float(xi.max() - xi.min())
            noisy = []
            for s in range(samples):
                eps = torch.tensor([rng.normal() for _ in range(xi.numel())], dtype=torch.float64)
                noisy.append((xi.double().flatten() + sigma * eps).to(torch.float32).reshape(xi.shape[1:]))
            xb = torch.stack(noisy)
        else:
            xb = xi.clone()
        xb.requires_grad_(True)
        t = group_target(m(xb)[c["layer"]], c["neurons"], c["agg"], c.get("weights")).sum()
        g, = torch.autograd.grad(t, [xb])
        g = g.double().mean(dim=0) if samples else g[0].double()
        vals = g.sum(dim=0)  # channels summed: [H, W]
        if not samples:  # the same gradient with the input in a batch of 64 (the daemon's forwards)
            xb64 = x[c["input"]:c["input"] + 64].clone().requires_grad_(True)
            t64 = group_target(m(xb64)[c["layer"]][0:1], c["neurons"], c["agg"], c.get("weights")).sum()
            g64, = torch.autograd.grad(t64, [xb64])
            drift = float((g64[0].double().sum(dim=0) - vals).abs().max() / vals.abs().max())
            if drift > 1e-6:
                raise SystemExit("case %s: the gradient moves by %.2g of its largest value with the batch: "
                                 "pick another input" % (c, drift))
        out.append(dict(c, shape=list(vals.shape), values=vals.flatten().tolist()))
    fixture = {"normalization": {"scale": SCALE, "mean": MEAN, "std": STD}, "torch": torch.__version__,
               "predicted": preds, "near_ties": close, "attributions": out}
    with open(os.path.join(ROOT, "tests", "fixtures", "fmnist_cnn_workflow.json"), "w") as f:
        json.dump(fixture, f)
    print("%d predictions (%d near ties), %d attributions" % (len(preds), len(close), len(out)))


if __name__ == "__main__":
    main()
