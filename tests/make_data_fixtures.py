#!/usr/bin/env python3
"""Writes small data-set fixtures for the command-line tests (tests/cli_test.sh).

Usage: make_data_fixtures.py OUT_DIR

Creates, with the standard library and numpy only:
  folder.tar.gz, folder.zip   image folder ROOT/{train,test}/<class>/NNNN.png (3 classes, 8x8 RGB)
  cifar-10-python.tar.gz      cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}, pickled
                              like the official release (bytes keys, numpy uint8 (N,3072) array)
  cifar-100-python.tar.gz     cifar-100-python/{train,test,meta} with fine and coarse labels
  expected.json               per-split counts and per-channel means the loader must reproduce
"""
import io
import json
import pickle
import struct
import sys
import tarfile
import zipfile
import zlib

import numpy as np


def png_bytes(rgb):
    """Lossless PNG of an (H, W, 3) uint8 array."""
    h, w, _ = rgb.shape
    raw = b"".join(b"\x00" + rgb[y].tobytes() for y in range(h))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)) +
            chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def add(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def channel_means(images):  # (N, C, H, W) uint8 -> per-channel mean of x / 255
    return (images.astype(np.float64) / 255.0).mean(axis=(0, 2, 3)).tolist()


def main(out):
    rng = np.random.default_rng(0)
    expected = {}

    # Image folder: 3 classes, 4 training and 2 test images each.
    classes = ["bird", "cat", "dog"]
    files, split_images = {}, {"train": [], "test": []}
    for split, n in (("train", 4), ("test", 2)):
        for cls in classes:
            for i in range(n):
                img = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
                files[f"folder/{split}/{cls}/{i:04d}.png"] = png_bytes(img)
                split_images[split].append(img.transpose(2, 0, 1))
    with tarfile.open(f"{out}/folder.tar.gz", "w:gz") as tar:
        for name, data in sorted(files.items()):
            add(tar, name, data)
    with zipfile.ZipFile(f"{out}/folder.zip", "w") as z:
        for name, data in sorted(files.items()):
            z.writestr(name, data)
    expected["folder"] = {s: {"count": len(v), "mean": channel_means(np.stack(v))} for s, v in split_images.items()}

    # CIFAR-10 python: 5 training batches of 6 images and a test batch of 4.
    def batch(n, num_classes, coarse=False):
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        d = {b"batch_label": b"fixture", b"data": data, b"filenames": [b"x.png"] * n}
        if coarse:
            d[b"fine_labels"] = [int(i % num_classes) for i in range(n)]
            d[b"coarse_labels"] = [int(i % 20) for i in range(n)]
        else:
            d[b"labels"] = [int(i % num_classes) for i in range(n)]
        return d

    c10 = {f"data_batch_{i}": batch(6, 10) for i in range(1, 6)}
    c10["test_batch"] = batch(4, 10)
    names10 = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    with tarfile.open(f"{out}/cifar-10-python.tar.gz", "w:gz") as tar:
        for name, d in c10.items():
            add(tar, f"cifar-10-batches-py/{name}", pickle.dumps(d, protocol=2))
        add(tar, "cifar-10-batches-py/batches.meta",
            pickle.dumps({b"label_names": names10, b"num_cases_per_batch": 6, b"num_vis": 3072}, protocol=2))
    train10 = np.concatenate([c10[f"data_batch_{i}"][b"data"] for i in range(1, 6)]).reshape(-1, 3, 32, 32)
    expected["cifar10"] = {
        "train": {"count": 30, "mean": channel_means(train10), "first_label": c10["data_batch_1"][b"labels"][1]},
        "test": {"count": 4, "mean": channel_means(c10["test_batch"][b"data"].reshape(-1, 3, 32, 32))},
    }

    # CIFAR-100 python (protocol 4, as re-pickled by Python 3).
    tr, te = batch(8, 100, coarse=True), batch(3, 100, coarse=True)
    meta = {b"fine_label_names": [f"fine{i}".encode() for i in range(100)],
            b"coarse_label_names": [f"coarse{i}".encode() for i in range(20)]}
    with tarfile.open(f"{out}/cifar-100-python.tar.gz", "w:gz") as tar:
        add(tar, "cifar-100-python/train", pickle.dumps(tr, protocol=4))
        add(tar, "cifar-100-python/test", pickle.dumps(te, protocol=4))
        add(tar, "cifar-100-python/meta", pickle.dumps(meta, protocol=4))
    expected["cifar100"] = {"train": {"count": 8, "mean": channel_means(tr[b"data"].reshape(-1, 3, 32, 32))},
                            "test": {"count": 3}}

    with open(f"{out}/expected.json", "w") as f:
        json.dump(expected, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1])
