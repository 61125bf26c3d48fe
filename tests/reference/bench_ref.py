"""Times one MeanFlow training step of the PyTorch reference (eager), for benches/train_step.rs.

Two variants, both on the whole batch as the official PyTorch code does (bf16: autocast
around the step, the JVP itself in float32):
  jvp       u, du/dt = torch.func.jvp(...) in one call, u keeps its graph
  two_pass  u = model(...) with grad; du/dt from torch.func.jvp under no_grad
Prints {"jvp": steps/s, "two_pass": steps/s} as JSON.
"""
import json
import sys
import time

import torch

from meanflow_ref import TANGENTS, bcast, build


import contextlib

DEV = "cpu"


def sample_tr(case, b):
    ts = case["time_sampler"]
    def draw():
        if ts["kind"] == "uniform":
            return torch.rand(b, device=DEV)
        return torch.sigmoid(torch.randn(b, device=DEV) * ts["sigma"] + ts["mu"])
    a, c = draw(), draw()
    t, r = torch.maximum(a, c), torch.minimum(a, c)
    n_same = int(b * (1 - case["ratio"]))
    return t, torch.where(torch.arange(b, device=DEV) < n_same, t, r)


def autocast(case, enabled=True):
    if case.get("precision") == "bf16":
        return torch.autocast(DEV, dtype=torch.bfloat16, enabled=enabled)
    return contextlib.nullcontext()


def step(model, opt, ema, case, two_pass):
    with autocast(case):
        loss = forward_loss(model, case, two_pass)
    opt.zero_grad(set_to_none=False)
    loss.backward()
    opt.step()
    with torch.no_grad():
        for p, q in zip(ema, model.parameters()):
            p.lerp_(q, 1 - case["ema_decay"])
    loss.item()


def forward_loss(model, case, two_pass):
    spec, b = case["model"], case["batch_size"]
    n = case["input_size"]
    shape = (b, spec["dim"]) if spec["kind"] == "mlp" else (b, spec["in_channels"], n, n)
    x = torch.rand(shape, device=DEV) * 2 - 1
    e = torch.randn_like(x)
    t, r = sample_tr(case, b)
    ncls = spec["num_classes"]
    y = torch.randint(0, ncls, (b,), device=DEV) if ncls > 0 else None
    z = (1 - bcast(t, x)) * x + bcast(t, x) * e
    v = e - x
    g = case.get("guidance")
    if g is not None:
        dropped = torch.rand(b, device=DEV) < g.get("class_dropout", 0.1)
        with torch.no_grad():
            null = torch.full_like(y, ncls)
            u_u = model(z, t, t, null)
            active = ((t >= g.get("t_min", 0.0)) & (t <= g.get("t_max", 1.0)) & ~dropped)
            w = bcast(torch.where(active, torch.full_like(t, g["omega"]), torch.ones_like(t)), v)
            k = bcast(torch.where(active, torch.full_like(t, g.get("kappa", 0.0)), torch.zeros_like(t)), v)
            v_g = w * v + (1 - w - k) * u_u
            if g.get("kappa", 0.0) != 0.0:
                v_g = v_g + k * model(z, t, t, y)
        y = torch.where(dropped, null, y)
    else:
        v_g = v
    f = lambda z_, t_, r_: model(z_, t_, r_, y)
    tangents = (v_g, torch.ones_like(t), torch.zeros_like(r))
    if case["ratio"] == 0.0:
        # Flow matching: t = r everywhere, the target is v and no JVP is needed.
        u, dudt = f(z, t, r).float(), torch.zeros_like(z)
    elif two_pass:
        u = f(z, t, r).float()
        with torch.no_grad(), autocast(case, enabled=False):
            _, dudt = torch.func.jvp(f, (z, t, r), tangents)
    else:
        with autocast(case, enabled=False):  # the JVP in float32
            u, dudt = torch.func.jvp(f, (z, t, r), tangents)
    u_tgt = (v_g - bcast(t - r, u) * dudt).detach()
    s = ((u - u_tgt) ** 2).flatten(1).sum(1)
    return (s / (s.detach() + case["norm_eps"]) ** case["norm_p"]).mean()


def steps_per_s(case, two_pass):
    model = build(case["model"]).to(DEV)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=case["lr"], betas=tuple(case["betas"]))
    ema = [p.detach().clone() for p in model.parameters()]
    for _ in range(case["warmup"]):
        step(model, opt, ema, case, two_pass)
    if DEV == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(case["steps"]):
        step(model, opt, ema, case, two_pass)
    rate = case["steps"] / (time.perf_counter() - t0)
    return rate, (torch.cuda.max_memory_allocated() if DEV == "cuda" else None)


if __name__ == "__main__":
    case = json.load(open(sys.argv[1]))
    DEV = case.get("device", "cpu")
    torch.set_num_threads(case["threads"])
    torch.manual_seed(0)
    jvp, jvp_peak = steps_per_s(case, False)
    two, two_peak = steps_per_s(case, True)
    print(json.dumps({"jvp": jvp, "two_pass": two, "jvp_peak": jvp_peak, "two_pass_peak": two_peak}))
