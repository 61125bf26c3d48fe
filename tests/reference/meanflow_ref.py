"""PyTorch reference of meanflow's networks and MeanFlow objective, for cross-checks.

Written from the paper and ../shared/docs/meanflow-spec.md, independently of the Rust code:
the JVP is torch.func.jvp, the optimizer torch.optim.Adam. Parameter names equal the
Rust VarStore names (= the PyTorch DiT state-dict keys), so one safetensors file loads
into both with strict=True.

Usage: python meanflow_ref.py CASE_DIR...   (each holding case.json + fixture.safetensors;
writes result.safetensors next to them)
"""
import json
import math
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

try:
    from safetensors.torch import load_file, save_file
except ImportError:  # a machine with torch but not safetensors (the GPU check): the format is tiny
    import struct

    _DTYPES = {"F32": torch.float32, "F64": torch.float64, "I64": torch.int64, "U8": torch.uint8,
               "BF16": torch.bfloat16, "F16": torch.float16, "I32": torch.int32, "BOOL": torch.bool}

    def load_file(path):
        raw = open(path, "rb").read()
        (n,) = struct.unpack("<Q", raw[:8])
        header = json.loads(raw[8:8 + n])
        out = {}
        for name, info in header.items():
            if name == "__metadata__":
                continue
            a, b = info["data_offsets"]
            buf = bytearray(raw[8 + n + a:8 + n + b])
            t = torch.frombuffer(buf, dtype=_DTYPES[info["dtype"]]) if b > a else torch.empty(0, dtype=_DTYPES[info["dtype"]])
            out[name] = t.reshape(info["shape"]).clone()
        return out

    def save_file(tensors, path):
        names = {v: k for k, v in _DTYPES.items()}
        header, blobs, off = {}, [], 0
        for name, t in tensors.items():
            data = t.contiguous().cpu().reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
            header[name] = {"dtype": names[t.dtype], "shape": list(t.shape), "data_offsets": [off, off + len(data)]}
            blobs.append(data)
            off += len(data)
        h = json.dumps(header).encode()
        h += b" " * (-len(h) % 8)
        with open(path, "wb") as f:
            f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))

# ----------------------------------------------------------------------------- embedders

SLOTS = {
    "t,r": [("t_embedder", "t"), ("r_embedder", "r")],
    "t,t-r": [("t_embedder", "t"), ("h_embedder", "h")],
    "t,r,t-r": [("t_embedder", "t"), ("r_embedder", "r"), ("h_embedder", "h")],
    "t-r": [("h_embedder", "h")],
}


def timestep_embedding(t, dim, scale, max_period=10000.0):
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half).to(t.dtype)
    args = (t * scale)[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class TimestepEmbedder(nn.Module):
    def __init__(self, hidden, freq_dim, scale):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(freq_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.freq_dim, self.scale = freq_dim, scale

    def forward(self, t):
        return self.mlp(timestep_embedding(t, self.freq_dim, self.scale))


class TimeEmbedding(nn.Module):
    """One embedder per time input, registered at the top level of the owning model."""

    def __init__(self, owner, time_input, hidden, freq_dim, scale):
        super().__init__()
        self.slots = SLOTS[time_input]
        for name, _ in self.slots:
            owner.add_module(name, TimestepEmbedder(hidden, freq_dim, scale))

    @staticmethod
    def embed(owner, slots, t, r):
        times = {"t": t, "r": r, "h": t - r}
        return sum(getattr(owner, name)(times[which]) for name, which in slots)


class LabelEmbedder(nn.Module):
    def __init__(self, num_classes, hidden):
        super().__init__()
        self.embedding_table = nn.Embedding(num_classes + 1, hidden)  # last row: null class

    def forward(self, y):
        return self.embedding_table(y)


# ----------------------------------------------------------------------------- DiT

def modulate(x, shift, scale):
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class Attention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q @ k.transpose(-2, -1) * (d // self.heads) ** -0.5).softmax(-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
    def __init__(self, dim, inner):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, inner), nn.Linear(inner, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class DiTBlock(nn.Module):
    def __init__(self, dim, heads, mlp_ratio):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def forward(self, x, c):
        sm, cm, gm, sp, cp, gp = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + gm.unsqueeze(1) * self.attn(modulate(self.norm1(x), sm, cm))
        return x + gp.unsqueeze(1) * self.mlp(modulate(self.norm2(x), sp, cp))


class FinalLayer(nn.Module):
    def __init__(self, dim, patch, out_ch):
        super().__init__()
        self.norm_final = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(dim, patch * patch * out_ch)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))

    def forward(self, x, c):
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class PatchEmbed(nn.Module):
    def __init__(self, in_ch, dim, patch):
        super().__init__()
        self.proj = nn.Conv2d(in_ch, dim, patch, stride=patch)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class DiT(nn.Module):
    def __init__(self, input_size, in_channels, num_classes, depth, hidden, heads, patch, mlp_ratio=4.0,
                 time_input="t,t-r", time_scale=1.0):
        super().__init__()
        self.in_channels, self.patch, self.input_size = in_channels, patch, input_size
        self.x_embedder = PatchEmbed(in_channels, hidden, patch)
        grid = input_size // patch
        self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid, hidden), requires_grad=False)
        self.slots = SLOTS[time_input]
        TimeEmbedding(self, time_input, hidden, 256, time_scale)
        self.y_embedder = LabelEmbedder(num_classes, hidden) if num_classes > 0 else None
        self.blocks = nn.ModuleList([DiTBlock(hidden, heads, mlp_ratio) for _ in range(depth)])
        self.final_layer = FinalLayer(hidden, patch, in_channels)

    def unpatchify(self, x):
        c, p = self.in_channels, self.patch
        g = self.input_size // p
        x = x.reshape(x.shape[0], g, g, p, p, c)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(x.shape[0], c, g * p, g * p)

    def forward(self, z, t, r, y):
        x = self.x_embedder(z) + self.pos_embed
        c = TimeEmbedding.embed(self, self.slots, t, r)
        if self.y_embedder is not None and y is not None:
            c = c + self.y_embedder(y)
        for block in self.blocks:
            x = block(x, c)
        return self.unpatchify(self.final_layer(x, c))


# ----------------------------------------------------------------------------- MLP

class MLPNet(nn.Module):
    def __init__(self, dim, hidden, layers, num_classes=0, time_input="t,t-r", time_scale=1.0):
        super().__init__()
        self.slots = SLOTS[time_input]
        TimeEmbedding(self, time_input, hidden, 64, time_scale)
        self.y_embedder = LabelEmbedder(num_classes, hidden) if num_classes > 0 else None
        self.net = nn.Module()
        self.net.input = nn.Linear(dim, hidden)
        self.net.hidden = nn.ModuleList([nn.Linear(hidden, hidden) for _ in range(layers)])
        self.net.output = nn.Linear(hidden, dim)

    def forward(self, z, t, r, y):
        c = TimeEmbedding.embed(self, self.slots, t, r)
        if self.y_embedder is not None and y is not None:
            c = c + self.y_embedder(y)
        x = F.silu(self.net.input(z) + c)
        for layer in self.net.hidden:
            x = F.silu(layer(x))
        return self.net.output(x)


# ----------------------------------------------------------------------------- U-Net

class ResBlock(nn.Module):
    def __init__(self, cin, cout, emb, groups):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.emb_proj = nn.Linear(emb, cout)
        self.norm2 = nn.GroupNorm(groups, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x, emb):
        h = self.conv1(F.silu(self.norm1(x))) + self.emb_proj(emb)[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return (self.skip(x) if self.skip is not None else x) + h


class UNet(nn.Module):
    """The small conv U-Net of src/models/unet.rs, level by level."""

    def __init__(self, in_channels, channels, blocks_per_level, groups, num_classes=0, time_input="t,t-r",
                 time_scale=1.0):
        super().__init__()
        emb = 4 * channels[0]
        self.slots = SLOTS[time_input]
        TimeEmbedding(self, time_input, emb, channels[0], time_scale)
        self.y_embedder = LabelEmbedder(num_classes, emb) if num_classes > 0 else None
        self.conv_in = nn.Conv2d(in_channels, channels[0], 3, padding=1)
        skips, cur = [channels[0]], channels[0]
        self.down = nn.ModuleList()
        for l, c in enumerate(channels):
            level = nn.Module()
            level.res = nn.ModuleList()
            for _ in range(blocks_per_level):
                level.res.append(ResBlock(cur, c, emb, groups))
                cur = c
                skips.append(cur)
            if l + 1 < len(channels):
                level.downsample = nn.Conv2d(cur, cur, 3, stride=2, padding=1)
                skips.append(cur)
            self.down.append(level)
        self.mid = nn.ModuleList([ResBlock(cur, cur, emb, groups), ResBlock(cur, cur, emb, groups)])
        ups = {}
        for l in reversed(range(len(channels))):
            level = nn.Module()
            level.res = nn.ModuleList()
            for _ in range(blocks_per_level + 1):
                level.res.append(ResBlock(cur + skips.pop(), channels[l], emb, groups))
                cur = channels[l]
            if l > 0:
                level.upsample = nn.Conv2d(cur, cur, 3, padding=1)
            ups[l] = level
        # Registered as up.0, up.1, ... (level index), applied from the deepest level.
        self.up = nn.ModuleList([ups[l] for l in range(len(channels))])
        self.norm_out = nn.GroupNorm(groups, cur)
        self.conv_out = nn.Conv2d(cur, in_channels, 3, padding=1)

    def forward(self, z, t, r, y):
        emb = TimeEmbedding.embed(self, self.slots, t, r)
        if self.y_embedder is not None and y is not None:
            emb = emb + self.y_embedder(y)
        emb = F.silu(emb)
        h = self.conv_in(z)
        skips = [h]
        for level in self.down:
            for block in level.res:
                h = block(h, emb)
                skips.append(h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
                skips.append(h)
        for block in self.mid:
            h = block(h, emb)
        for level in reversed(self.up):
            for block in level.res:
                h = block(torch.cat([h, skips.pop()], 1), emb)
            if hasattr(level, "upsample"):
                h = level.upsample(F.interpolate(h, scale_factor=2, mode="nearest"))
        return self.conv_out(F.silu(self.norm_out(h)))


def build(spec):
    kind = spec["kind"]
    common = dict(time_input=spec["time_input"], time_scale=spec["time_scale"])
    if kind == "dit":
        return DiT(spec["input_size"], spec["in_channels"], spec["num_classes"], spec["depth"], spec["hidden"],
                   spec["heads"], spec["patch"], spec["mlp_ratio"], **common)
    if kind == "mlp":
        return MLPNet(spec["dim"], spec["hidden"], spec["layers"], spec["num_classes"], **common)
    if kind == "unet":
        return UNet(spec["in_channels"], spec["channels"], spec["blocks_per_level"], spec["groups"],
                    spec["num_classes"], **common)
    raise ValueError(f"unknown model kind {kind}")


# ----------------------------------------------------------------------------- objective

TANGENTS = {"v,0,1": (0.0, 1.0), "v,0,0": (0.0, 0.0), "v,1,0": (1.0, 0.0), "v,1,1": (1.0, 1.0)}


def bcast(t, like):
    return t.view(-1, *([1] * (like.dim() - 1)))


def meanflow_loss(model, case, d):
    """Spec sections 2, 4, 5: returns a dict of every intermediate."""
    x, e, t, r = d["x"], d["e"], d["t"], d["r"]
    labels, dropped = d.get("labels"), d.get("dropped")
    z = (1 - bcast(t, x)) * x + bcast(t, x) * e
    v = e - x
    g = case.get("guidance")
    labels_in = labels
    v_g = v
    if g is not None:
        null = case["num_classes"]
        labels_in = torch.where(dropped, torch.full_like(labels, null), labels)
        with torch.no_grad():
            u_c = model(z, t, t, labels)
            u_u = model(z, t, t, torch.full_like(labels, null))
            active = (t >= g["t_min"]) & (t <= g["t_max"]) & ~dropped
            w = torch.where(active, torch.full_like(t, g["omega"]), torch.ones_like(t))
            k = torch.where(active, torch.full_like(t, g["kappa"]), torch.zeros_like(t))
            w, k = bcast(w, v), bcast(k, v)
            v_g = w * v + k * u_c + (1 - w - k) * u_u
    dr, dt = TANGENTS[case["tangent"]]
    u, dudt = torch.func.jvp(lambda z_, t_, r_: model(z_, t_, r_, labels_in), (z, t, r),
                             (v_g, torch.full_like(t, dt), torch.full_like(r, dr)))
    u_tgt = (v_g - bcast((t - r).clamp(0, 1), u) * dudt).detach()
    s = ((u - u_tgt) ** 2).flatten(1).sum(1)
    weight = (s.detach() + case["norm_eps"]) ** case["norm_p"]
    loss = (s / weight).mean()
    return dict(u=u, dudt=dudt, u_tgt=u_tgt, per_sample=s, loss=loss)


def run_case(case_dir):
    case = json.load(open(f"{case_dir}/case.json"))
    torch.set_default_dtype(torch.float32)
    fx = load_file(f"{case_dir}/fixture.safetensors")
    device = case.get("device", "cpu")
    params = {k[len("param."):]: v.to(device) for k, v in fx.items() if k.startswith("param.")}
    draws = {k[len("draw."):]: v.to(device) for k, v in fx.items() if k.startswith("draw.")}
    if "dropped" in draws:
        draws["dropped"] = draws["dropped"].bool()
    model = build(case["model"]).to(device)
    model.load_state_dict(params, strict=True)
    out = meanflow_loss(model, case, draws)
    model.zero_grad()
    out["loss"].backward()
    res = {k: v.detach().reshape(-1) if v.dim() == 0 else v.detach() for k, v in out.items()}
    for name, p in model.named_parameters():
        if p.requires_grad:
            res[f"grad.{name}"] = p.grad.detach().clone()
    if "adam" in case:
        a = case["adam"]
        ema = {n: p.detach().clone() for n, p in model.named_parameters()}
        opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=a["lr"],
                               betas=tuple(a["betas"]), eps=1e-8, weight_decay=0.0)
        # The step is taken from the Rust gradients (compared above on their own): Adam's
        # first step is about lr * sign(g), which would turn float noise in near-zero
        # gradients into lr-sized differences and hide what this checks, the update rule.
        for name, p in model.named_parameters():
            if p.requires_grad:
                p.grad = fx[f"rustgrad.{name}"].to(device)
        opt.step()
        with torch.no_grad():
            for n, p in model.named_parameters():
                res[f"after.{n}"] = p.detach().clone()
                res[f"ema.{n}"] = ema[n].lerp(p.detach(), 1 - a["ema_decay"])
    save_file({k: v.contiguous().cpu() for k, v in res.items()}, f"{case_dir}/result.safetensors")


def forward_check(spec_json, weights, inputs, out):
    """Loads `weights` into the reference model with strict=True and writes u for `inputs`."""
    model = build(json.load(open(spec_json)))
    model.load_state_dict(load_file(weights), strict=True)
    x = load_file(inputs)
    with torch.no_grad():
        u = model(x["z"], x["t"], x["r"], x.get("labels"))
    save_file({"u": u.contiguous()}, out)


if __name__ == "__main__":
    if sys.argv[1] == "--forward":
        forward_check(*sys.argv[2:6])
    else:
        for d in sys.argv[1:]:
            run_case(d)
