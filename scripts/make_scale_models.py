#!/usr/bin/python3
"""Models and datasets at the DeepEverest paper's scale, made here from what
Debian packages (python3-torch, python3-torchvision, dataset-fashion-mnist):
nothing is downloaded, every step is seeded, so a run regenerates the same
files. Run with Debian's python3.

  make_scale_models.py wide-fixture      tests/fixtures/wide_model.pt (committed):
                                         a tiny seeded conv net whose first layer
                                         has 131,072 neurons, for the CI spill test
  make_scale_models.py vgg16   [-o DIR]  torchvision VGG16 (with batch norm) for
                                         32x32x3 inputs, the paper's CIFAR setup,
                                         trained one epoch on Fashion-MNIST resized
                                         to 32x32x3; and its 10,000-input test set
  make_scale_models.py resnet18 [-o DIR] torchvision ResNet18 at 192x192x3 (its
                                         first layer: 64x96x96 = 589,824 neurons),
                                         trained one short epoch likewise; and a
                                         10,000-input test set at 192x192x3
  make_scale_models.py fmnist-1m [-o DIR] 1,000,000 Fashion-MNIST inputs for the
                                         demo CNN (train+test with seeded shifts
                                         and flips) and their labels, written as
                                         .npy in slices: never held whole in memory

DIR defaults to build/scale (large files are not committed). Datasets are
uint8 .npy files [N,C,H,W] with labels [N] (int32); the models' normalization
is that of the demo: x = (raw/255 - 0.2860) / 0.3530 on every channel."""

import argparse
import gzip
import os
import struct
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(__file__))
from export_model import export  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
FM = "/usr/share/datasets/fashion-mnist"
MEAN, STD = 0.2860, 0.3530


def read_idx(path):
    with gzip.open(path) as f:
        data = f.read()
    ndim = data[3]
    dims = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    return torch.frombuffer(bytearray(data[4 + 4 * ndim:]), dtype=torch.uint8).reshape(dims)


def fmnist(split):
    pre = "train" if split == "train" else "t10k"
    return (read_idx("%s/%s-images-idx3-ubyte.gz" % (FM, pre)),
            read_idx("%s/%s-labels-idx1-ubyte.gz" % (FM, pre)).to(torch.int64))


def to_rgb(images, side, seed):
    """uint8 [N,28,28] -> uint8 [N,3,side,side]: bilinear resize and a seeded
    per-image colour tint, so the three channels differ."""
    g = torch.Generator().manual_seed(seed)
    x = images.float().unsqueeze(1)
    if side != 28:
        x = F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False)
    tint = 0.6 + 0.4 * torch.rand(len(images), 3, 1, 1, generator=g)
    return (x * tint).round().clamp(0, 255).to(torch.uint8)


def normalize(u8):
    return (u8.float() / 255 - MEAN) / STD


class NpyWriter:
    """A C-order .npy written slice by slice (the header names the final shape)."""

    def __init__(self, path, shape, descr):
        self.f = open(path, "wb")
        h = "{'descr': '%s', 'fortran_order': False, 'shape': (%s), }" % (
            descr, ", ".join(map(str, shape)) + ("," if len(shape) == 1 else ""))
        h += " " * (64 - (10 + len(h) + 1) % 64) + "\n"
        self.f.write(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(h)) + h.encode())

    def write(self, t):
        self.f.write(t.contiguous().numpy().tobytes())

    def close(self):
        self.f.close()


def write_set(path, labels_path, images_u8, labels):
    w = NpyWriter(path, list(images_u8.shape), "|u1")
    for i in range(0, len(images_u8), 1000):
        w.write(images_u8[i:i + 1000])
    w.close()
    lw = NpyWriter(labels_path, [len(labels)], "<i4")
    lw.write(labels.to(torch.int32))
    lw.close()


def train(model, images_u8, labels, side, seed, epochs=1, batch=64, lr=0.05, limit=None):
    torch.manual_seed(seed)
    n = len(images_u8) if limit is None else min(limit, len(images_u8))
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    model.train()
    t0 = time.time()
    for ep in range(epochs):
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + ep))
        seen = correct = 0
        for i in range(0, n, batch):
            idx = order[i:i + batch]
            x = normalize(to_rgb(images_u8[idx], side, seed + i))
            y = labels[idx]
            out = model(x)
            loss = F.cross_entropy(out, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            seen += len(idx)
            correct += int((out.argmax(1) == y).sum())
            if (i // batch) % 20 == 0:
                print("  epoch %d: %d/%d inputs, loss %.3f, train accuracy %.3f, %.0f s" %
                      (ep, seen, n, float(loss), correct / seen, time.time() - t0), flush=True)
    model.eval()
    return model


def accuracy(model, images_u8, labels, side, n=2000):
    with torch.no_grad():
        pred = torch.cat([model(normalize(to_rgb(images_u8[i:i + 100], side, 99))).argmax(1)
                          for i in range(0, n, 100)])
    return float((pred == labels[:n]).float().mean())


def cmd_wide_fixture(args):
    torch.manual_seed(7)

    class Wide(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU())
            self.pool = nn.MaxPool2d(4)
            self.squeeze = nn.Sequential(nn.AdaptiveAvgPool2d(4), nn.Flatten())
            self.fc = nn.Linear(512, 16)

        def forward(self, x):
            return self.fc(self.squeeze(self.pool(self.conv(x))))

    out = os.path.join(ROOT, "tests", "fixtures", "wide_model.pt")
    export(Wide(), ["conv", "pool", "fc"], [3, 64, 64], out)
    print("wrote %s (%d bytes)" % (out, os.path.getsize(out)))


def cmd_vgg16(args):
    import torchvision
    os.makedirs(args.out, exist_ok=True)
    torch.manual_seed(1)
    m = torchvision.models.vgg16_bn(num_classes=10)
    # the CIFAR form: 512x1x1 features into a small classifier
    m.avgpool = nn.Identity()
    m.classifier = nn.Sequential(nn.Linear(512, 512), nn.ReLU(True), nn.Linear(512, 10))
    xs, ys = fmnist("train")
    train(m, xs, ys, 32, seed=2, limit=args.train, lr=0.02)
    tx, ty = fmnist("test")
    print("vgg16: test accuracy %.3f" % accuracy(m, tx, ty, 32))
    layers = ["features.5", "features.22", "features.42", "classifier.1", "classifier.2"]
    path = os.path.join(args.out, "vgg16_fmnist32.pt")
    export(m, layers, [3, 32, 32], path)
    write_set(os.path.join(args.out, "fmnist32_test.npy"), os.path.join(args.out, "fmnist32_test_labels.npy"),
              to_rgb(tx, 32, 1234), ty)
    print("wrote", path)


def cmd_resnet18(args):
    import torchvision
    os.makedirs(args.out, exist_ok=True)
    torch.manual_seed(3)
    m = torchvision.models.resnet18(num_classes=10)
    xs, ys = fmnist("train")
    weights = os.path.join(args.out, "resnet18_fmnist192.weights")
    if os.path.exists(weights):  # trained already (seeded): only export again
        m.load_state_dict(torch.load(weights))
        m.eval()
    else:
        train(m, xs, ys, 192, seed=4, limit=args.train, batch=32, lr=0.02)
        torch.save(m.state_dict(), weights)
    tx, ty = fmnist("test")
    print("resnet18: test accuracy %.3f" % accuracy(m, tx, ty, 192, n=500))
    layers = ["relu", "layer1", "layer3", "fc"]
    path = os.path.join(args.out, "resnet18_fmnist192.pt")
    export(m, layers, [3, 192, 192], path)
    w = NpyWriter(os.path.join(args.out, "fmnist192_test.npy"), [len(tx), 3, 192, 192], "|u1")
    for i in range(0, len(tx), 500):
        w.write(to_rgb(tx[i:i + 500], 192, 5678 + i))
    w.close()
    lw = NpyWriter(os.path.join(args.out, "fmnist192_test_labels.npy"), [len(ty)], "<i4")
    lw.write(ty.to(torch.int32))
    lw.close()
    print("wrote", path)


def cmd_fmnist_1m(args):
    os.makedirs(args.out, exist_ok=True)
    (a, la), (b, lb) = fmnist("train"), fmnist("test")
    base, labels = torch.cat([a, b]), torch.cat([la, lb])
    n = args.count
    w = NpyWriter(os.path.join(args.out, "fmnist_1m.npy"), [n, 28, 28], "|u1")
    lw = NpyWriter(os.path.join(args.out, "fmnist_1m_labels.npy"), [n], "<i4")
    g = torch.Generator().manual_seed(11)
    step = 10000
    for i in range(0, n, step):
        k = min(step, n - i)
        src = torch.randint(0, len(base), (k,), generator=g)
        img = base[src]
        # seeded shifts of up to 3 pixels (zero fill) and horizontal flips
        dx = torch.randint(-3, 4, (k,), generator=g)
        dy = torch.randint(-3, 4, (k,), generator=g)
        flip = torch.rand(k, generator=g) < 0.5
        padded = F.pad(img, (3, 3, 3, 3))
        out = torch.empty_like(img)
        for j in range(k):
            y0, x0 = 3 + int(dy[j]), 3 + int(dx[j])
            t = padded[j, y0:y0 + 28, x0:x0 + 28]
            out[j] = t.flip(-1) if flip[j] else t
        w.write(out)
        lw.write(labels[src].to(torch.int32))
        if (i // step) % 10 == 0:
            print("  %d/%d" % (i + k, n), flush=True)
    w.close()
    lw.close()
    print("wrote %s/fmnist_1m.npy" % args.out)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("what", choices=["wide-fixture", "vgg16", "resnet18", "fmnist-1m"])
    p.add_argument("-o", "--out", default=os.path.join(ROOT, "build", "scale"))
    p.add_argument("--train", type=int, default=None, help="training inputs (default: 10000 vgg16, 2000 resnet18)")
    p.add_argument("--count", type=int, default=1000000, help="fmnist-1m: inputs")
    p.add_argument("--threads", type=int, default=0)
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.train is None:
        a.train = 10000 if a.what == "vgg16" else 2000
    {"wide-fixture": cmd_wide_fixture, "vgg16": cmd_vgg16, "resnet18": cmd_resnet18,
     "fmnist-1m": cmd_fmnist_1m}[a.what](a)


if __name__ == "__main__":
    main()
