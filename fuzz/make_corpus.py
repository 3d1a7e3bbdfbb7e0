#!/usr/bin/env python3
"""Writes the seed corpus of the liondg fuzz targets (fuzz/fuzz_*.cpp).

Usage: make_corpus.py OUT_DIR [--cache-seed-tool PATH]

Writes small valid inputs into OUT_DIR/<target>/ for the targets idx, cifar, image,
pickle, archive, config and cache (plus a few near-valid ones where they reach
code the valid ones do not). Needs numpy and PIL (Debian's /usr/bin/python3 has
both) and no network. The cache seeds are written by the make_cache_seed program
of the fuzz build (liondg::write_cache itself), given with --cache-seed-tool; without
it the cache target starts from the hand-made seeds below (a file and templates).
"""
import argparse
import bz2
import gzip
import io
import json
import lzma
import os
import pickle
import struct
import subprocess
import sys
import tarfile
import zipfile
import zlib

import numpy as np
from PIL import Image

kCifarImageBytes = 3 * 32 * 32
# make_cache_seed.cpp and fuzz_cache.cpp use this key.
kCacheKey = "liondg-fuzz-cache-key"


def write(out, target, name, data):
    d = os.path.join(out, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def gz(data):
    return gzip.compress(data, mtime=0)


# ------------------------------------------------------------------ IDX

def idx(array):
    """IDX file of unsigned bytes (type 0x08), big-endian dimensions."""
    a = np.asarray(array, dtype=np.uint8)
    return bytes([0, 0, 0x08, a.ndim]) + b"".join(struct.pack(">I", d) for d in a.shape) + a.tobytes()


def make_idx(out, rng):
    images = rng.integers(0, 256, size=(2, 4, 4), dtype=np.uint8)
    labels = np.array([3, 7], dtype=np.uint8)
    write(out, "idx", "images-2x4x4.idx3", idx(images))
    write(out, "idx", "labels-2.idx1", idx(labels))
    write(out, "idx", "images-2x4x4.idx3.gz", gz(idx(images)))
    write(out, "idx", "labels-2.idx1.gz", gz(idx(labels)))
    write(out, "idx", "4d.idx", idx(rng.integers(0, 256, size=(1, 2, 2, 3), dtype=np.uint8)))
    write(out, "idx", "empty-dim.idx", idx(np.zeros((0, 28, 28), dtype=np.uint8)))
    write(out, "idx", "28x28.idx3.gz", gz(idx(np.zeros((1, 28, 28), dtype=np.uint8))))


# ------------------------------------------------------------------ CIFAR binary

def make_cifar(out, rng):
    def records(n, label_bytes, pixels):
        return b"".join(bytes(label_bytes(i)) + pixels(i) for i in range(n))

    noisy = lambda i: rng.integers(0, 256, size=kCifarImageBytes, dtype=np.uint8).tobytes()
    flat = lambda i: bytes([i * 40 % 256]) * kCifarImageBytes
    write(out, "cifar", "cifar10-1.bin", records(1, lambda i: [7], noisy))
    write(out, "cifar", "cifar100-1.bin", records(1, lambda i: [19, 99], noisy))
    write(out, "cifar", "cifar10-3-flat.bin.gz", gz(records(3, lambda i: [i], flat)))
    write(out, "cifar", "cifar100-3-flat.bin.gz", gz(records(3, lambda i: [i, 50 + i], flat)))


# ------------------------------------------------------------------ images

def png_chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_interlaced(pixels):
    """Adam7-interlaced 8-bit PNG of an (H, W) grey or (H, W, 3) RGB array (PIL writes none)."""
    a = np.asarray(pixels, dtype=np.uint8)
    h, w = a.shape[:2]
    color_type = 0 if a.ndim == 2 else 2
    passes = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]
    raw = b""
    for x0, y0, dx, dy in passes:
        sub = a[y0::dy, x0::dx]
        if sub.shape[0] == 0 or sub.shape[1] == 0:
            continue
        raw += b"".join(b"\x00" + row.tobytes() for row in sub)
    ihdr = struct.pack(">IIBBBBB", w, h, 8, color_type, 0, 0, 1)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(raw)) +
            png_chunk(b"IEND", b""))


def pil_bytes(image, fmt, **options):
    buf = io.BytesIO()
    image.save(buf, fmt, **options)
    return buf.getvalue()


def make_images(out, rng):
    rgb = Image.fromarray(rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8), "RGB")
    grey = Image.fromarray(rng.integers(0, 256, size=(8, 8), dtype=np.uint8), "L")
    seeds = {
        "grey.png": pil_bytes(grey, "PNG"),
        "rgb.png": pil_bytes(rgb, "PNG"),
        "rgba.png": pil_bytes(rgb.convert("RGBA"), "PNG"),
        "grey-alpha.png": pil_bytes(grey.convert("LA"), "PNG"),
        "palette.png": pil_bytes(rgb.convert("P", palette=Image.ADAPTIVE, colors=16), "PNG"),
        "palette-trns.png": pil_bytes(rgb.convert("P", palette=Image.ADAPTIVE, colors=4), "PNG", transparency=0),
        "grey-trns.png": pil_bytes(grey, "PNG", transparency=7),
        "1bit.png": pil_bytes(grey.convert("1"), "PNG"),
        "16bit.png": pil_bytes(Image.fromarray(rng.integers(0, 65536, size=(6, 5), dtype=np.uint16)), "PNG"),
        "interlaced-rgb.png": png_interlaced(rng.integers(0, 256, size=(9, 7, 3), dtype=np.uint8)),
        "interlaced-grey.png": png_interlaced(rng.integers(0, 256, size=(5, 11), dtype=np.uint8)),
        "grey.jpg": pil_bytes(grey, "JPEG", quality=90),
        "rgb.jpg": pil_bytes(rgb, "JPEG", quality=90, subsampling=0),
        "rgb-420.jpg": pil_bytes(rgb.resize((16, 16)), "JPEG", quality=75, subsampling=2),
        "progressive.jpg": pil_bytes(rgb.resize((16, 16)), "JPEG", quality=80, progressive=True),
        "progressive-grey.jpg": pil_bytes(grey, "JPEG", quality=80, progressive=True),
        "optimized.jpg": pil_bytes(rgb, "JPEG", quality=50, optimize=True),
        "cmyk.jpg": pil_bytes(rgb.convert("CMYK"), "JPEG", quality=90),  # rejected: reaches that path
    }
    for name, data in seeds.items():
        write(out, "image", name, data)


# ------------------------------------------------------------------ pickles

def cifar_batch(rng, n, coarse=False, label_array=False, str_keys=False):
    k = (lambda s: s) if str_keys else (lambda s: s.encode())
    d = {k("batch_label"): b"fuzz seed", k("data"): rng.integers(0, 256, size=(n, kCifarImageBytes), dtype=np.uint8),
         k("filenames"): [b"x.png"] * n}
    labels = [int(i % 10) for i in range(n)]
    if label_array:
        labels = np.array(labels, dtype=np.int64)
    if coarse:
        d[k("fine_labels")] = labels
        d[k("coarse_labels")] = [int(i % 20) for i in range(n)]
    else:
        d[k("labels")] = labels
    return d


def make_pickles(out, rng):
    names = {b"label_names": [b"airplane", b"automobile", b"bird"], b"num_cases_per_batch": 2, b"num_vis": 3072}
    write(out, "pickle", "cifar10-batch-p2.pickle", pickle.dumps(cifar_batch(rng, 1), protocol=2))
    write(out, "pickle", "cifar10-batch-p4.pickle", pickle.dumps(cifar_batch(rng, 1), protocol=4))
    write(out, "pickle", "cifar100-batch-p2.pickle", pickle.dumps(cifar_batch(rng, 1, coarse=True), protocol=2))
    write(out, "pickle", "cifar100-batch-p4-array-labels.pickle",
          pickle.dumps(cifar_batch(rng, 2, coarse=True, label_array=True), protocol=4))
    write(out, "pickle", "cifar10-batch-p3-str-keys.pickle",
          pickle.dumps(cifar_batch(rng, 1, str_keys=True), protocol=3))
    write(out, "pickle", "cifar10-batch-p5.pickle", pickle.dumps(cifar_batch(rng, 1), protocol=5))
    shaped = cifar_batch(rng, 1)
    shaped[b"data"] = shaped[b"data"].reshape(1, 3, 32, 32)
    write(out, "pickle", "cifar10-batch-4d-p4.pickle", pickle.dumps(shaped, protocol=4))
    write(out, "pickle", "meta-p2.pickle", pickle.dumps(names, protocol=2))
    write(out, "pickle", "meta-p4.pickle", pickle.dumps(names, protocol=4))
    small = {"ints": [0, -1, 255, 65535, 2**31, -2**63, 2**63 - 1], "float": 1.5, "none": None, "t": (True, False),
             "nested": {"a": [(), (1,), (1, 2, 3)]}, "arr": np.arange(6, dtype=">i4").reshape(2, 3),
             "f16": np.zeros(3, dtype="<f2"), "u": "caf\u00e9", "ba": bytearray(b"xy")}
    shared = [1, 2]
    small["shared"] = (shared, shared)
    for protocol in (2, 4, 5):
        write(out, "pickle", f"values-p{protocol}.pickle", pickle.dumps(small, protocol=protocol))
    write(out, "pickle", "values-p0-ints.pickle", pickle.dumps([1, 2, (3, None)], protocol=0))
    write(out, "pickle", "values-p1.pickle", pickle.dumps({b"a": [1.25, b"b", (1, 2)]}, protocol=1))


# ------------------------------------------------------------------ archives

def tar_bytes(members, mode="w", fmt=tarfile.GNU_FORMAT):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode, format=fmt) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.mtime = 0
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif isinstance(data, tuple):  # ("link", target)
                info.type = tarfile.SYMTYPE
                info.linkname = data[1]
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def zip_bytes(members, compression):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=compression) as z:
        for name, data in members:
            if data is None:
                z.writestr(zipfile.ZipInfo(name + "/"), b"")
            else:
                z.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), data, compress_type=compression)
    return buf.getvalue()


def make_archives(out):
    members = [("data", None), ("data/train", None), ("data/train/a.txt", b"hello\n"),
               ("./data/test//b.bin", bytes(range(40))), ("empty", b"")]
    plain = tar_bytes(members)
    write(out, "archive", "two-members.tar", plain)
    write(out, "archive", "two-members.tar.gz", gz(plain))
    write(out, "archive", "two-members.tar.bz2", bz2.compress(plain))
    write(out, "archive", "two-members.tar.xz", lzma.compress(plain))
    write(out, "archive", "ustar.tar", tar_bytes([("x/y", b"123")], fmt=tarfile.USTAR_FORMAT))
    long_name = "long/" + "n" * 120 + "/file.txt"
    write(out, "archive", "gnu-longname.tar", tar_bytes([(long_name, b"x")], fmt=tarfile.GNU_FORMAT))
    write(out, "archive", "pax-longname.tar", tar_bytes([(long_name, b"x")], fmt=tarfile.PAX_FORMAT))
    write(out, "archive", "symlink.tar", tar_bytes([("a", b"1"), ("l", ("link", "a"))]))
    write(out, "archive", "stored.zip", zip_bytes(members[:3], zipfile.ZIP_STORED))
    write(out, "archive", "deflated.zip", zip_bytes(members[:3], zipfile.ZIP_DEFLATED))
    write(out, "archive", "bzip2.zip", zip_bytes([("a.txt", b"abc" * 10)], zipfile.ZIP_BZIP2))
    # Member names for the safe_member_path half of the target.
    write(out, "archive", "member-path.txt", b"./a//b/./c/")


# ------------------------------------------------------------------ grid configs

def make_configs(out):
    smoke = {"name": "smoke", "datasets": ["synthetic"], "models": ["densenet-ds"], "inits": ["he", "lion-dg"],
             "seeds": [1, 2], "model": {"growth_rate": 4, "block_layers": [1, 1, 1]},
             "synthetic": {"train_size": 128, "test_size": 64, "image_size": 12, "classes": 4},
             "train": {"steps": 12, "batch_size": 16, "target_acc": 0.5, "target_window": 4, "grad_every": 2,
                       "eval_every": 6}}
    write(out, "config", "smoke.json", json.dumps(smoke).encode())
    full = {"name": "full", "datasets": ["cifar10", "fashion-mnist"], "models": ["resnet-ds"],
            "inits": ["lsuv", "gradinit"], "seeds": [42, 0],
            "data": {"cifar10": "/data/cifar-10-batches-bin"},
            "train": {"lr": 0.001, "beta1": 0.9, "beta2": 0.999, "weight_decay": 0.05, "aux_weight": 0.3,
                      "aux_warmup_steps": 10, "eval_batch_size": 64, "eval_limit": 100, "hflip": True,
                      "no_decay_scalars": True, "no_decay_zero_init": False, "scalar_lr_mult": 2.0,
                      "lsuv_samples": 32, "lsuv_tolerance": 0.1, "lsuv_max_iter": 5, "gradinit_iters": 3,
                      "gradinit_batch_size": 8, "gradinit_lr": 0.1, "gradinit_eta": 0.1, "gradinit_gamma": 1.0,
                      "gradinit_min_scale": 0.01, "aux_init": "zero"},
            "model": {"widths": [16, 32], "blocks_per_stage": [1, 1], "aux_after": [0], "aux_hidden": 0,
                      "batch_norm": True, "compression": 0.5},
            "synthetic": {"channels": 3, "noise": 10.0},
            "sweep": {"aux_weight": [0.1, 1.0], "lr": [0.001, 0.01]}}
    write(out, "config", "full.json", json.dumps(full, indent=1).encode())
    toml = b"""name = "alpha-sweep"
datasets = ["cifar10"]
models = ["densenet-ds"]
inits = ["he", "lion-dg"]
seeds = [42, 123, 456]

[data]            # where each data set lives
cifar10 = "/data/cifar-10-batches-bin"

[train]
steps = 3000
target_acc = 0.7
hflip = true

[model]
growth_rate = 12
block_layers = [2, 2, 2]

[synthetic]

[sweep]
aux_weight = [0.1, 0.3, 1.0]
"""
    write(out, "config", "alpha-sweep.toml", toml)
    write(out, "config", "inline.toml",
          b'name = \'t\'\ndatasets = ["synthetic"]\nmodels = ["resnet-ds"]\ninits = ["he"]\nseeds = [1]\n'
          b'train = { steps = 0x10, lr = 1e-3 }\nsynthetic.classes = 4\n')
    write(out, "config", "results.jsonl",
          b'{"key":"a","status":"completed"}\n{"key":"b","status":"failed","error":"x"}\n'
          b'{"key":"a","status":"diverged"}\n{"key":"c","stat')


# ------------------------------------------------------------------ cache

def cache_file(header, payload):
    h = json.dumps(header, separators=(",", ":")).encode()
    pad = (-(16 + len(h))) % 64
    return b"LIONDGDC" + struct.pack("<II", 1, len(h)) + h + b"\0" * pad + payload


def make_cache(out, tool):
    # A hand-made valid file (same layout as liondg::write_cache), in case the tool is missing.
    images = bytes(range(4))  # one 1x2x2 train image
    labels = struct.pack("<q", 1)
    payload = images + labels
    header = {"key": kCacheKey, "name": "fuzz", "format": "idx", "root": "", "path": "/x",
              "class_names": ["a", "b"], "coarse_class_names": [],
              "splits": {"train": {"count": 1, "shape": [1, 2, 2], "coarse": False},
                         "test": {"count": 0, "shape": [1, 2, 2], "coarse": False}},
              "payload_bytes": len(payload), "payload_crc32": zlib.crc32(payload) & 0xFFFFFFFF}
    write(out, "cache", "handmade.ldgcache", cache_file(header, payload))
    # Templates (fuzz_cache.cpp): "HEADER\0PAYLOAD", with @SIZE@ and @CRC@ filled in by the target.
    for name, train, test, payload in (
            ("grey", {"count": 1, "shape": [1, 2, 2], "coarse": False}, {"count": 0, "shape": [1, 2, 2], "coarse": False},
             bytes(range(4)) + struct.pack("<q", 1)),
            ("coarse", {"count": 1, "shape": [3, 1, 1], "coarse": True}, {"count": 1, "shape": [3, 1, 1], "coarse": True},
             b"abc" + struct.pack("<qq", 2, 0) + b"def" + struct.pack("<qq", 0, 1))):
        template = dict(header, splits={"train": train, "test": test}, payload_bytes="@SIZE@", payload_crc32="@CRC@")
        text = json.dumps(template, separators=(",", ":")).replace('"@SIZE@"', "@SIZE@").replace('"@CRC@"', "@CRC@")
        write(out, "cache", f"template-{name}.txt", text.encode() + b"\0" + payload)
    if tool:
        d = os.path.join(out, "cache")
        subprocess.run([tool, d], check=True)
    else:
        print("make_corpus.py: no --cache-seed-tool: cache seeds are the hand-made ones only", file=sys.stderr)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out")
    parser.add_argument("--cache-seed-tool", help="the make_cache_seed program of the fuzz build")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    os.makedirs(args.out, exist_ok=True)
    make_idx(args.out, rng)
    make_cifar(args.out, rng)
    make_images(args.out, rng)
    make_pickles(args.out, rng)
    make_archives(args.out)
    make_configs(args.out)
    make_cache(args.out, args.cache_seed_tool)
    for target in sorted(os.listdir(args.out)):
        files = os.listdir(os.path.join(args.out, target))
        print(f"{target}: {len(files)} seeds")


if __name__ == "__main__":
    main()
