# cuDNN floor of the peer model: PyTorch training step (eager and CUDA graph) under
# deterministic / benchmark / channels-last / bf16 settings. Run from the repository root.
import sys, time, torch, torch.nn.functional as F
sys.path.insert(0, "bench")
import peer
def step(model, opt, x, y):
    logits, aux = model(x)
    loss = F.cross_entropy(logits, y) + 0.3 * sum(F.cross_entropy(z, y) for z in aux)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=False)
    return loss
def run(name, det, bench, cl, graph, bf16=False):
    torch.backends.cudnn.deterministic = bool(det); torch.backends.cudnn.benchmark = bool(bench)
    torch.manual_seed(0)
    m = peer.make_model(name).cuda()
    x = torch.randn(128, 3, 32, 32, device="cuda"); y = torch.randint(10, (128,), device="cuda")
    if cl: m = m.to(memory_format=torch.channels_last); x = x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3, weight_decay=0.05, capturable=graph, foreach=True)
    f = lambda: step(m, opt, x, y)
    if bf16:
        g0 = f
        def f():
            with torch.autocast("cuda", dtype=torch.bfloat16): return g0()
    s = torch.cuda.Stream(); s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(5): f()
    torch.cuda.current_stream().wait_stream(s)
    if graph:
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g): f()
        f = g.replay
    for _ in range(5): f()
    torch.cuda.synchronize(); t = time.perf_counter()
    for _ in range(200): f()
    torch.cuda.synchronize(); ms = (time.perf_counter() - t) / 200 * 1e3
    print(f"{name:12s} det={det:d} bench={bench:d} cl={cl:d} graph={graph:d} bf16={bf16:d}: {ms:.3f} ms/step", flush=True)
for name in ["densenet-ds", "resnet-ds"]:
    for det, bench, cl, graph, bf16 in [(0,0,0,0,0),(1,0,0,0,0),(0,0,0,1,0),(1,0,0,1,0),(0,1,0,1,0),(1,1,0,1,0),(0,0,1,1,0),(1,0,1,1,0),(0,1,1,1,0),(1,1,1,1,0),(0,1,1,1,1)]:
        try: run(name, det, bench, cl, graph, bf16)
        except Exception as e: print(name, det, bench, cl, graph, bf16, "ERR", str(e)[:200])
