#!/usr/bin/env python3
"""Writes the malformed inputs of tests/bad_inputs_test.sh (standard library only).

Usage: make_bad_inputs.py OUT_DIR

Each subdirectory or file is one bad input next to a valid base it was derived from:
IDX (MNIST layout), CIFAR-10/100 binary, image folders (PNG), archives and a TOML grid.
"""
import io
import os
import struct
import sys
import tarfile
import zlib


def idx(dims, payload, magic_type=0x08):
    head = struct.pack(">BBBB", 0, 0, magic_type, len(dims)) + b"".join(struct.pack(">I", d) for d in dims)
    return head + bytes(payload)


def png(w, h, seed=0):
    raw = b"".join(b"\x00" + bytes(((x * 7 + y * 3 + seed) % 256) for x in range(w * 3)) for y in range(h))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)) +
            chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def write(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def mnist(out, name, train_images=None, train_labels=None):
    """A valid 4-image MNIST-layout directory, with optional replacements."""
    n, pixels = 4, [i % 256 for i in range(4 * 28 * 28)]
    files = {
        "train-images-idx3-ubyte": train_images if train_images is not None else idx([n, 28, 28], pixels),
        "train-labels-idx1-ubyte": train_labels if train_labels is not None else idx([n], [0, 1, 2, 3]),
        "t10k-images-idx3-ubyte": idx([n, 28, 28], pixels),
        "t10k-labels-idx1-ubyte": idx([n], [3, 2, 1, 0]),
    }
    for f, data in files.items():
        write(os.path.join(out, name, f), data)


def cifar10(out, name, record_label=None, cut=0, extra=b""):
    """A valid CIFAR-10 binary directory (2 records per batch), with optional damage to batch 1."""
    def records(label):
        return b"".join(bytes([label]) + bytes((i * 3 + label) % 256 for i in range(3072)) for _ in range(2))
    for i in range(1, 6):
        data = records(i % 10)
        if i == 1:
            if record_label is not None:
                data = records(record_label)
            if cut:
                data = data[:-cut]
            data += extra
        write(os.path.join(out, name, "data_batch_%d.bin" % i), data)
    write(os.path.join(out, name, "test_batch.bin"), records(3))


def folder(out, name, sizes=None, extra=None, empty_class=False, corrupt=None):
    """ROOT/{train,test}/{a,b}/NNNN.png, 8x8 RGB, with optional damage."""
    root = os.path.join(out, name)
    for split in ("train", "test"):
        for c, cls in enumerate(("a", "b")):
            if empty_class and split == "train" and cls == "b":
                os.makedirs(os.path.join(root, split, cls), exist_ok=True)
                continue
            for k in range(3):
                w, h = (sizes or {}).get((split, cls, k), (8, 8))
                write(os.path.join(root, split, cls, "%04d.png" % k), png(w, h, seed=c * 10 + k))
    for rel, data in (extra or {}).items():
        write(os.path.join(root, rel), data)
    if corrupt:
        rel, data = corrupt
        write(os.path.join(root, rel), data)


def tar_with_member(out, name, member):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        for rel, data in (("train/a/0000.png", png(8, 8)), ("test/a/0000.png", png(8, 8)), (member, png(8, 8))):
            info = tarfile.TarInfo(rel)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    write(os.path.join(out, name), buf.getvalue())


def main(out):
    pixels = [0] * (4 * 28 * 28)
    mnist(out, "idx-magic", train_images=b"\x12\x34\x08\x03" + idx([4, 28, 28], pixels)[4:])
    mnist(out, "idx-truncated", train_images=idx([4, 28, 28], pixels)[:-100])
    mnist(out, "idx-oversized", train_images=idx([4, 28, 28], pixels) + b"\0" * 50)
    mnist(out, "idx-label-range", train_labels=idx([4], [0, 1, 2, 12]))
    mnist(out, "idx-count", train_labels=idx([3], [0, 1, 2]))
    mnist(out, "idx-zero-dim", train_images=idx([4, 0, 28], []))
    cifar10(out, "cifar-truncated", cut=100)
    cifar10(out, "cifar-label-range", record_label=17)
    cifar10(out, "cifar-oversized", extra=b"\0" * 10)
    folder(out, "folder-empty-class", empty_class=True)
    folder(out, "folder-mixed", extra={"train/a/notes.txt": b"not an image"})
    folder(out, "folder-sizes", sizes={("train", "b", 1): (9, 8)})
    folder(out, "folder-bad-png", corrupt=("train/a/0001.png", png(8, 8)[:40]))
    folder(out, "folder-bad-jpeg", corrupt=("train/b/0002.jpg", b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + b"\x00" * 20))
    tar_with_member(out, "absolute.tar.gz", "/etc/evil.png")
    tar_with_member(out, "dotdot.tar.gz", "train/../../evil.png")
    write(os.path.join(out, "truncated.tar.gz"), open(os.path.join(out, "absolute.tar.gz"), "rb").read()[:60])
    write(os.path.join(out, "bad.toml"), b'name = "x"\ndatasets = ["synthetic"]\nmodels = [densenet-ds\n')
    write(os.path.join(out, "unknown-key.toml"),
          b'name = "x"\ndatasets = ["synthetic"]\nmodels = ["densenet-ds"]\ninits = ["he"]\nseeds = [1]\n'
          b'[train]\nstepz = 5\n')
    write(os.path.join(out, "neg-seed.toml"),
          b'name = "x"\ndatasets = ["synthetic"]\nmodels = ["densenet-ds"]\ninits = ["he"]\nseeds = [1, -4]\n')


if __name__ == "__main__":
    main(sys.argv[1])
