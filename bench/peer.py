#!/usr/bin/env python3
"""The peer: DenseNet-DS and ResNet-DS in PyTorch eager, the same models and training
step as liondg (see docs/models.md), timed the same way as `liondg bench step|eval`.

    peer.py step --model densenet-ds --batch-size 128 --steps 20 --threads 2 [--json]
    peer.py eval --model resnet-ds ...
    peer.py flops --model densenet-ds            # forward FLOPs per image (conv + linear)
    peer.py params --model densenet-ds           # parameter count (checked against `liondg describe`)

Runs on Debian's python3-torch (the same libtorch version as the C++ build).
"""
import argparse
import json
import math
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


# ------------------------------------------------------------------ models

class Head(nn.Module):
    """Global average pooling -> Linear (the paper's auxiliary and main heads)."""

    def __init__(self, channels, classes):
        super().__init__()
        self.fc = nn.Linear(channels, classes)

    def forward(self, x):
        return self.fc(x.mean(dim=(2, 3)))


class DenseLayer(nn.Module):
    def __init__(self, cin, growth):
        super().__init__()
        self.norm = nn.BatchNorm2d(cin)
        self.conv = nn.Conv2d(cin, growth, 3, padding=1, bias=False)

    def forward(self, x):
        return self.conv(F.relu(self.norm(x)))


class Transition(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.norm = nn.BatchNorm2d(cin)
        self.conv = nn.Conv2d(cin, cout, 1, bias=False)

    def forward(self, x):
        return F.avg_pool2d(self.conv(F.relu(self.norm(x))), 2)


class DenseNetDS(nn.Module):
    """Stem conv3x3 (24) -> 3 dense blocks of 6 BN-ReLU-Conv3x3(12) layers with transitions
    (compression 0.5, 2x2 average pooling) -> BN-ReLU -> GAP -> Linear; aux heads after blocks 1, 2."""

    def __init__(self, classes=10, cin=3, growth=12, stem=24, layers=(6, 6, 6), compression=0.5, aux_after=(1, 2)):
        super().__init__()
        self.stem = nn.Conv2d(cin, stem, 3, padding=1, bias=False)
        c = stem
        self.blocks, self.transitions, block_channels = nn.ModuleList(), nn.ModuleList(), []
        for b, n in enumerate(layers):
            block = nn.ModuleList()
            for _ in range(n):
                block.append(DenseLayer(c, growth))
                c += growth
            self.blocks.append(block)
            block_channels.append(c)
            if b + 1 < len(layers):
                out = max(1, int(math.floor(c * compression)))
                self.transitions.append(Transition(c, out))
                c = out
        self.final_norm = nn.BatchNorm2d(c)
        self.main_head = Head(c, classes)
        self.aux_after = list(aux_after)
        self.aux_heads = nn.ModuleList(Head(block_channels[b - 1], classes) for b in aux_after)

    def forward(self, x):
        h = self.stem(x)
        taps = {}
        for b, block in enumerate(self.blocks):
            maps = [h]
            for layer in block:
                maps.append(layer(torch.cat(maps, 1)))
            h = torch.cat(maps, 1)
            taps[b + 1] = h
            if b < len(self.transitions):
                h = self.transitions[b](h)
        h = F.relu(self.final_norm(h))
        return self.main_head(h), [head(taps[b]) for head, b in zip(self.aux_heads, self.aux_after)]


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        b = F.relu(self.bn1(self.conv1(x)))
        b = self.bn2(self.conv2(b))
        return F.relu(b + (x if self.shortcut is None else self.shortcut(x)))


class ResNetDS(nn.Module):
    """CIFAR ResNet (widths 16, 32, 64; 3 basic blocks per stage) with side-tap heads after stages 1, 2."""

    def __init__(self, classes=10, cin=3, widths=(16, 32, 64), blocks=(3, 3, 3), aux_after=(1, 2)):
        super().__init__()
        self.stem_conv = nn.Conv2d(cin, widths[0], 3, 1, 1, bias=False)
        self.stem_bn = nn.BatchNorm2d(widths[0])
        c, self.stages = widths[0], nn.ModuleList()
        for s, (w, n) in enumerate(zip(widths, blocks)):
            stage = nn.ModuleList()
            for i in range(n):
                stage.append(BasicBlock(c, w, 2 if s > 0 and i == 0 else 1))
                c = w
            self.stages.append(stage)
        self.main_head = Head(c, classes)
        self.aux_after = list(aux_after)
        self.aux_heads = nn.ModuleList(Head(widths[s - 1], classes) for s in aux_after)

    def forward(self, x):
        h = F.relu(self.stem_bn(self.stem_conv(x)))
        taps = {}
        for s, stage in enumerate(self.stages):
            for block in stage:
                h = block(h)
            taps[s + 1] = h
        return self.main_head(h), [head(taps[s]) for head, s in zip(self.aux_heads, self.aux_after)]


def make_model(name, classes=10):
    if name == "densenet-ds":
        model = DenseNetDS(classes)
    elif name == "resnet-ds":
        model = ResNetDS(classes)
    else:
        raise SystemExit(f"unknown model {name!r}; expected densenet-ds or resnet-ds")
    # LION-DG: He backbone, zero last layer of every auxiliary head.
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    for head in model.aux_heads:
        nn.init.zeros_(head.fc.weight)
        nn.init.zeros_(head.fc.bias)
    return model


# ------------------------------------------------------------------ timing

def train_step(model, opt, x, y):
    """liondg's step: L = L_main + 0.3 * sum L_aux, backward, AdamW, loss read back."""
    logits, aux = model(x)
    loss = F.cross_entropy(logits, y) + 0.3 * sum(F.cross_entropy(z, y) for z in aux)
    opt.zero_grad()
    loss.backward()
    opt.step()
    loss.item()


def summarize(seconds):
    return {"median_s": statistics.median(seconds), "min_s": min(seconds), "seconds": seconds}


def bench_step(a):
    dev = torch.device(a.device)
    model = make_model(a.model, a.num_classes).to(dev)
    # On CUDA the peer gets PyTorch's fastest stock AdamW (fused kernels), the strongest eager baseline.
    fused = {"fused": True} if dev.type == "cuda" else {}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.05, **fused)
    x = torch.randn(a.batch_size, 3, a.image_size, a.image_size, device=dev)
    y = torch.randint(a.num_classes, (a.batch_size,), device=dev)
    model.train()
    seconds = []
    for i in range(a.warmup + a.steps):
        t0 = time.perf_counter()
        train_step(model, opt, x, y)  # loss.item() synchronizes every step, as a training loop that logs it
        if i >= a.warmup:
            seconds.append(time.perf_counter() - t0)
    return summarize(seconds)


def bench_eval(a):
    dev = torch.device(a.device)
    model = make_model(a.model, a.num_classes).to(dev).eval()
    x = torch.randn(a.batch_size, 3, a.image_size, a.image_size, device=dev)
    seconds = []
    with torch.inference_mode():
        for i in range(a.warmup + a.steps):
            t0 = time.perf_counter()
            logits, aux = model(x)
            logits.argmax(1)[0].item()
            if i >= a.warmup:
                seconds.append(time.perf_counter() - t0)
    r = summarize(seconds)
    r["images_per_s"] = a.batch_size / r["median_s"]
    return r


def bench_e2e(a):
    """A short real run the standard PyTorch way: JPEGs read from the archive into memory once,
    decoded with PIL in DataLoader workers every epoch, flip + normalization, training steps and
    periodic evaluation on the first --eval-images test images. Wall time from the start."""
    import io
    import tarfile

    import numpy as np
    from PIL import Image

    t0 = time.perf_counter()
    splits = {"train": [], "test": []}
    with tarfile.open(a.data) as tf:
        for m in tf:
            if not m.isfile() or not m.name.lower().endswith((".jpg", ".jpeg", ".png")):
                continue
            parts = m.name.split("/")
            split, cls = parts[-3], parts[-2]
            if split in splits:
                splits[split].append((cls, tf.extractfile(m).read()))
    classes = sorted({c for c, _ in splits["train"]})
    index = {c: i for i, c in enumerate(classes)}
    mean = torch.tensor([0.4914, 0.4822, 0.4465]).view(3, 1, 1)
    std = torch.tensor([0.2470, 0.2435, 0.2616]).view(3, 1, 1)

    class Images(torch.utils.data.Dataset):
        def __init__(self, items, train):
            self.items, self.train = items, train

        def __len__(self):
            return len(self.items)

        def __getitem__(self, i):
            cls, raw = self.items[i]
            img = np.asarray(Image.open(io.BytesIO(raw)).convert("RGB"))
            x = (torch.from_numpy(img.copy()).permute(2, 0, 1).float() / 255.0 - mean) / std
            if self.train and torch.rand(()) < 0.5:
                x = x.flip(2)
            return x, index[cls]

    train = torch.utils.data.DataLoader(Images(splits["train"], True), batch_size=a.batch_size, shuffle=True,
                                        num_workers=a.workers, drop_last=True, persistent_workers=a.workers > 0)
    test = torch.utils.data.DataLoader(Images(splits["test"][:a.eval_images], False), batch_size=256,
                                       num_workers=a.workers)
    model = make_model(a.model, len(classes))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.05)
    step, it = 0, iter(train)
    while step < a.steps:
        try:
            x, y = next(it)
        except StopIteration:
            it = iter(train)
            continue
        model.train()
        train_step(model, opt, x, y)
        step += 1
        if step % a.eval_every == 0 or step == a.steps:
            model.eval()
            with torch.inference_mode():
                for x, y in test:
                    model(x)[0].argmax(1)
    wall = time.perf_counter() - t0
    return {"wall_s": wall, "train_images_per_s": a.steps * a.batch_size / wall}


def forward_flops(a):
    """Multiply-adds x 2 of every convolution and linear layer for one image."""
    model = make_model(a.model, a.num_classes).eval()
    total = 0

    def conv_hook(m, inp, out):
        nonlocal total
        k = m.kernel_size[0] * m.kernel_size[1] * (m.in_channels // m.groups)
        total += 2 * k * out.numel() // out.shape[0]

    def linear_hook(m, inp, out):
        nonlocal total
        total += 2 * m.in_features * m.out_features

    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            m.register_forward_hook(conv_hook)
        elif isinstance(m, nn.Linear):
            m.register_forward_hook(linear_hook)
    with torch.no_grad():
        model(torch.zeros(1, 3, a.image_size, a.image_size))
    return {"forward_flops_per_image": total}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["step", "eval", "e2e", "flops", "params"])
    p.add_argument("--data", help="e2e: image-folder archive (e.g. cifar10-jpeg.tar.gz)")
    p.add_argument("--eval-every", type=int, default=25)
    p.add_argument("--eval-images", type=int, default=2000)
    p.add_argument("--workers", type=int, default=2, help="e2e: DataLoader worker processes")
    p.add_argument("--model", default="densenet-ds")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    p.add_argument("--device", default="cpu", help="step/eval: cpu or cuda")
    a = p.parse_args()
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    if a.what == "step":
        r = bench_step(a)
    elif a.what == "eval":
        r = bench_eval(a)
    elif a.what == "e2e":
        r = bench_e2e(a)
    elif a.what == "flops":
        r = forward_flops(a)
    else:
        r = {"parameters": sum(p.numel() for p in make_model(a.model, a.num_classes).parameters())}
    r.update({"model": a.model, "batch_size": a.batch_size, "threads": torch.get_num_threads(), "steps": a.steps,
              "torch": torch.__version__, "device": a.device})
    print(json.dumps(r) if a.json else r)


if __name__ == "__main__":
    main()
