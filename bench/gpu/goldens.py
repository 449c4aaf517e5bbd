#!/usr/bin/env python3
"""Third-party logits goldens for `mixc run`.

Builds tiny configurations of flash-linear-attention's Hugging Face classes
(`GLAForCausalLM`, `GatedDeltaNetForCausalLM`) and of transformers'
`LlamaForCausalLM`, fills them with seeded random weights (fp32), runs one
short prompt on the GPU and writes, per model, into `$OUT/<name>/`:

  config.json          the Hugging Face config (`save_pretrained`'s)
  weights.safetensors  the state dict under its Hugging Face names (f32)
  golden.safetensors   input_ids [T] (i32), logits [T, vocab] (f32),
                       hidden.{j} [T, d] (the model's hidden states: the
                       embeddings, after each block, after the final norm),
                       mixer_out.{i} [T, d] (each layer's mixer output
                       before the residual add), for debugging a mismatch

and packs everything into `$OUT/goldens.tar` (the device tool fetches few
files). mixc's side lives in `tests/golden/hf/<name>/model.toml` and
`tests/cli.rs` (`hf_goldens_match_mixc`).

It also re-computes each model in float64 on the CPU with plain formulas
(the semantics mixc implements) and prints the largest relative difference
of the logits, so a mismatch can be placed on either side.

Conventions that matter (read from fla 0.6.0's sources):
- fp32 everywhere, TF32 off (cuBLAS and Triton), eval mode, no grad;
- prompts of at most 64 tokens make fla's layers take their
  `fused_recurrent` kernels, which use no `tl.dot` (exact fp32 sums);
- fla's GLA: `gk = logsigmoid(gk_proj(x)) / 16` with a rank-16 `gk_proj`
  (Linear without bias, then Linear with bias), output `rmsnorm(o) * w *
  swish(g_proj(x))` per head (eps = norm_eps), no short conv, no feature map;
- fla's Gated DeltaNet: silu short convs (width 4) on q, k, v, L2-normed
  q, k (eps 1e-6 inside the sqrt), beta = sigmoid(b_proj(x)), gate
  `-exp(A_log) * softplus(a_proj(x) + dt_bias)`, output `rmsnorm(o) * w *
  swish(g_proj(x))` (eps = norm_eps);
- Llama: rotate-half RoPE, grouped-query heads, eager attention.

Usage (GPU machine with PyTorch, Triton, fla and transformers >= 5.6.2):
  OUT=out python3 bench/gpu/goldens.py [--only gla,gdn,llama]

On a lent GPU machine without network (transformers 5.17 is installed there;
fla is not): download the wheels here (`.whl/`, ignored by git; see
../shared/anchors/README.md), carry `.whl`, and run
  python3 -m pip install -q --no-index --no-deps --target /tmp/site \
      .whl/fla_core-0.6.0-*.whl .whl/flash_linear_attention-0.6.0-*.whl
  PYTHONPATH=/tmp/site python3 bench/gpu/goldens.py
then unpack `$OUT/goldens.tar` into tests/golden/hf/ (model.toml and
README.md there are written by hand).
"""

import argparse
import json
import math
import os
import struct
import sys
import tarfile
import time
import traceback

os.environ.setdefault("TRITON_F32_DEFAULT", "ieee")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

VOCAB = 128
HIDDEN = 64
LAYERS = 2
MLP_HIDDEN = 64
PROMPT_LEN = 24
SEED = 0


def st_save(path, tensors):
    """A minimal safetensors writer (f32 / i32), names in sorted order."""
    dtypes = {torch.float32: "F32", torch.int32: "I32"}
    header, blobs, offset = {}, [], 0
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        data = t.numpy().tobytes()
        header[name] = {"dtype": dtypes[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for b in blobs:
            f.write(b)


def init_weights(model, gen):
    """Seeded, well-scaled random weights for every parameter (by name)."""
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            shape = tuple(p.shape)
            normal = torch.randn(shape, generator=gen, dtype=torch.float64)
            uniform = torch.rand(shape, generator=gen, dtype=torch.float64)
            leaf = name.rsplit(".", 1)[-1]
            if name.endswith("A_log"):
                v = torch.log(1.0 + 15.0 * uniform)
            elif name.endswith("dt_bias"):
                dt = torch.exp(uniform * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
                v = dt + torch.log(-torch.expm1(-dt))
            elif "norm" in name or "layernorm" in name:
                v = 1.0 + 0.1 * normal
            elif "embed" in name:
                v = normal
            elif leaf == "bias":
                v = 0.5 * normal
            elif "conv1d" in name:
                v = normal / math.sqrt(shape[-1])
            else:
                v = normal / math.sqrt(shape[-1])
            p.copy_(v.to(p.dtype))


# ---- float64 references with plain formulas (mixc's semantics) -------------


def rms(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def swiglu_mlp(x, sd, p):
    gate = x @ sd[p + "gate_proj.weight"].T
    up = x @ sd[p + "up_proj.weight"].T
    return (F.silu(gate) * up) @ sd[p + "down_proj.weight"].T


def causal_conv_silu(x, w):
    # x [T, C], w [C, 1, K]: y[t, c] = silu(sum_j w[c, j] x[t - K + 1 + j, c])
    k = w.shape[-1]
    y = F.conv1d(x.T.unsqueeze(0), w, padding=k - 1, groups=x.shape[1])[0, :, : x.shape[0]].T
    return F.silu(y)


def gla_mixer(h, sd, p, cfg):
    t = h.shape[0]
    nh = cfg["heads"]
    q = (h @ sd[p + "q_proj.weight"].T).view(t, nh, -1)
    k = (h @ sd[p + "k_proj.weight"].T).view(t, nh, -1)
    v = (h @ sd[p + "v_proj.weight"].T).view(t, nh, -1)
    gk = (h @ sd[p + "gk_proj.0.weight"].T) @ sd[p + "gk_proj.1.weight"].T + sd[p + "gk_proj.1.bias"]
    gk = F.logsigmoid(gk.view(t, nh, -1)) / 16.0
    dk, dv = q.shape[-1], v.shape[-1]
    s = torch.zeros(nh, dk, dv, dtype=h.dtype)
    o = torch.zeros(t, nh, dv, dtype=h.dtype)
    for i in range(t):
        s = torch.exp(gk[i])[:, :, None] * s + k[i][:, :, None] * v[i][:, None, :]
        o[i] = torch.einsum("hk,hkv->hv", q[i] * dk**-0.5, s)
    g = (h @ sd[p + "g_proj.weight"].T).view(t, nh, dv)
    o = rms(o, sd[p + "g_norm_swish_gate.weight"], cfg["eps"]) * F.silu(g)
    return o.reshape(t, -1) @ sd[p + "o_proj.weight"].T


def gdn_mixer(h, sd, p, cfg):
    t = h.shape[0]
    nh = cfg["heads"]
    q = causal_conv_silu(h @ sd[p + "q_proj.weight"].T, sd[p + "q_conv1d.weight"]).view(t, nh, -1)
    k = causal_conv_silu(h @ sd[p + "k_proj.weight"].T, sd[p + "k_conv1d.weight"]).view(t, nh, -1)
    v = causal_conv_silu(h @ sd[p + "v_proj.weight"].T, sd[p + "v_conv1d.weight"]).view(t, nh, -1)
    q = q / torch.sqrt((q * q).sum(-1, keepdim=True) + 1e-6)
    k = k / torch.sqrt((k * k).sum(-1, keepdim=True) + 1e-6)
    beta = torch.sigmoid(h @ sd[p + "b_proj.weight"].T)
    g = -torch.exp(sd[p + "A_log"]) * F.softplus(h @ sd[p + "a_proj.weight"].T + sd[p + "dt_bias"])
    dk, dv = q.shape[-1], v.shape[-1]
    s = torch.zeros(nh, dk, dv, dtype=h.dtype)
    o = torch.zeros(t, nh, dv, dtype=h.dtype)
    for i in range(t):
        s = torch.exp(g[i])[:, None, None] * s
        vn = beta[i][:, None] * (v[i] - torch.einsum("hk,hkv->hv", k[i], s))
        s = s + k[i][:, :, None] * vn[:, None, :]
        o[i] = torch.einsum("hk,hkv->hv", q[i] * dk**-0.5, s)
    gate = (h @ sd[p + "g_proj.weight"].T).view(t, nh, dv)
    o = rms(o, sd[p + "o_norm.weight"], cfg["eps"]) * F.silu(gate)
    return o.reshape(t, -1) @ sd[p + "o_proj.weight"].T


def rope(x, theta):
    # x [T, H, D], rotate-half convention
    t, _, d = x.shape
    inv = theta ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    ang = torch.arange(t, dtype=torch.float64)[:, None] * inv[None, :]
    cos, sin = torch.cos(ang)[:, None, :], torch.sin(ang)[:, None, :]
    x1, x2 = x[..., : d // 2], x[..., d // 2 :]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1)


def llama_mixer(h, sd, p, cfg):
    t = h.shape[0]
    nh, nkv, hd = cfg["heads"], cfg["kv_heads"], cfg["head_dim"]
    q = rope((h @ sd[p + "q_proj.weight"].T).view(t, nh, hd), cfg["theta"])
    k = rope((h @ sd[p + "k_proj.weight"].T).view(t, nkv, hd), cfg["theta"])
    v = (h @ sd[p + "v_proj.weight"].T).view(t, nkv, hd)
    rep = nh // nkv
    k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    att = torch.einsum("qhd,khd->hqk", q, k) * hd**-0.5
    att = att.masked_fill(torch.triu(torch.ones(t, t, dtype=torch.bool), 1), float("-inf")).softmax(-1)
    o = torch.einsum("hqk,khd->qhd", att, v)
    return o.reshape(t, -1) @ sd[p + "o_proj.weight"].T


def reference_logits(spec, sd, ids):
    sd = {k: v.detach().to("cpu", torch.float64) for k, v in sd.items()}
    names = spec["names"]
    x = sd[names["embed"]][ids.cpu().long()]
    eps = spec["eps"]
    for i in range(LAYERS):
        lp = f"model.layers.{i}."
        h = rms(x, sd[lp + names["mixer_norm"]], eps)
        x = x + spec["mixer"](h, sd, lp + names["mixer"], spec["cfg"])
        h = rms(x, sd[lp + names["mlp_norm"]], eps)
        x = x + swiglu_mlp(h, sd, lp + "mlp.")
    x = rms(x, sd["model.norm.weight"], eps)
    return x @ sd["lm_head.weight"].T


# ---- the three models ------------------------------------------------------


def build(name):
    if name == "gla":
        from fla.models import GLAConfig, GLAForCausalLM

        cfg = GLAConfig(
            hidden_size=HIDDEN, expand_k=0.5, expand_v=1.0, num_hidden_layers=LAYERS, num_heads=2,
            intermediate_size=MLP_HIDDEN, vocab_size=VOCAB, norm_eps=1e-6, use_output_gate=True,
            use_short_conv=False, feature_map=None, clamp_min=None, hidden_act="swish",
            tie_word_embeddings=False, attn_mode="chunk", fuse_norm=True, fuse_swiglu=True,
        )
        model = GLAForCausalLM(cfg)
        spec = {
            "names": {"embed": "model.embeddings.weight", "mixer_norm": "attn_norm.weight", "mlp_norm": "mlp_norm.weight", "mixer": "attn."},
            "eps": 1e-6, "mixer": gla_mixer, "cfg": {"heads": 2, "eps": 1e-6},
        }
        return model, cfg, spec, lambda m, i: m.model.layers[i].attn
    if name == "gdn":
        from fla.models import GatedDeltaNetConfig, GatedDeltaNetForCausalLM

        cfg = GatedDeltaNetConfig(
            hidden_size=HIDDEN, expand_v=2.0, head_dim=16, num_heads=2, num_hidden_layers=LAYERS,
            intermediate_size=MLP_HIDDEN, vocab_size=VOCAB, norm_eps=1e-6, use_gate=True, use_short_conv=True,
            conv_size=4, allow_neg_eigval=False, hidden_act="swish", tie_word_embeddings=False,
            attn_mode="chunk", fuse_norm=True, fuse_swiglu=True,
        )
        model = GatedDeltaNetForCausalLM(cfg)
        spec = {
            "names": {"embed": "model.embeddings.weight", "mixer_norm": "attn_norm.weight", "mlp_norm": "mlp_norm.weight", "mixer": "attn."},
            "eps": 1e-6, "mixer": gdn_mixer, "cfg": {"heads": 2, "eps": 1e-6},
        }
        return model, cfg, spec, lambda m, i: m.model.layers[i].attn
    if name == "llama":
        from transformers import LlamaConfig, LlamaForCausalLM

        theta = 10000.0
        kw = dict(
            vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=MLP_HIDDEN, num_hidden_layers=LAYERS,
            num_attention_heads=4, num_key_value_heads=2, head_dim=16, rms_norm_eps=1e-5, hidden_act="silu",
            attention_bias=False, mlp_bias=False, tie_word_embeddings=False, max_position_embeddings=256,
        )
        try:
            cfg = LlamaConfig(**kw, rope_parameters={"rope_type": "default", "rope_theta": theta})
        except TypeError:
            cfg = LlamaConfig(**kw, rope_theta=theta)
        cfg._attn_implementation = "eager"
        rp = getattr(cfg, "rope_parameters", None) or {}
        got = rp.get("rope_theta", getattr(cfg, "rope_theta", None))
        if got is not None and float(got) != theta:
            raise RuntimeError(f"llama config has rope theta {got}, expected {theta}")
        model = LlamaForCausalLM(cfg)
        spec = {
            "names": {"embed": "model.embed_tokens.weight", "mixer_norm": "input_layernorm.weight", "mlp_norm": "post_attention_layernorm.weight", "mixer": "self_attn."},
            "eps": 1e-5, "mixer": llama_mixer, "cfg": {"heads": 4, "kv_heads": 2, "head_dim": 16, "theta": theta},
        }
        return model, cfg, spec, lambda m, i: m.model.layers[i].self_attn
    raise ValueError(name)


def rel(a, b):
    a, b = a.double().cpu(), b.double().cpu()
    return float((a - b).norm() / b.norm())


def rowwise_max_rel(a, b):
    a, b = a.double().cpu(), b.double().cpu()
    return float(((a - b).norm(dim=-1) / b.norm(dim=-1)).max())


def run_one(name, out_dir, report):
    t0 = time.time()
    model, cfg, spec, mixer_of = build(name)
    gen = torch.Generator().manual_seed(SEED)
    init_weights(model, gen)
    ids = torch.randint(0, VOCAB, (PROMPT_LEN,), generator=gen, dtype=torch.int64)
    model = model.to("cuda", torch.float32).eval()
    captured = {}
    hooks = []
    for i in range(LAYERS):
        def hook(_mod, _inp, out, i=i):
            captured[i] = (out[0] if isinstance(out, tuple) else out).detach()
        hooks.append(mixer_of(model, i).register_forward_hook(hook))
    with torch.no_grad():
        out = model(input_ids=ids[None].cuda(), use_cache=False, output_hidden_states=True)
    for hk in hooks:
        hk.remove()
    logits = out.logits[0].float()
    sd = {k: v.detach().float().cpu().contiguous() for k, v in model.state_dict().items()}
    d = os.path.join(out_dir, name)
    os.makedirs(d, exist_ok=True)
    cfg.save_pretrained(d)
    st_save(os.path.join(d, "weights.safetensors"), sd)
    golden = {"input_ids": ids.to(torch.int32), "logits": logits.cpu()}
    for j, hs in enumerate(out.hidden_states or ()):
        golden[f"hidden.{j}"] = hs[0].float().cpu()
    for i, o in captured.items():
        golden[f"mixer_out.{i}"] = o[0].float().cpu()
    st_save(os.path.join(d, "golden.safetensors"), golden)
    ref = reference_logits(spec, sd, ids)
    r = {
        "model": name,
        "class": type(model).__name__,
        "tensors": len(sd),
        "params": sum(v.numel() for v in sd.values()),
        "logits_norm": float(logits.norm()),
        "vs_float64_formulas_rel": rel(logits, ref),
        "vs_float64_formulas_rowmax": rowwise_max_rel(logits, ref),
        "seconds": round(time.time() - t0, 2),
        "names": sorted(sd),
        "shapes": {k: list(v.shape) for k, v in sorted(sd.items())},
    }
    report.append(r)
    print(json.dumps({k: v for k, v in r.items() if k not in ("names", "shapes")}), flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="gla,gdn,llama")
    args = ap.parse_args()
    out_dir = os.environ.get("OUT", "goldens_out")
    os.makedirs(out_dir, exist_ok=True)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    import transformers

    env = {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "gpu": torch.cuda.get_device_name(0),
        "python": sys.version.split()[0],
    }
    try:
        import fla

        env["fla"] = getattr(fla, "__version__", "?")
    except Exception as e:  # noqa: BLE001
        env["fla"] = f"import failed: {e}"
    print(json.dumps(env), flush=True)
    report = []
    failed = []
    for name in args.only.split(","):
        try:
            run_one(name, out_dir, report)
        except Exception:  # noqa: BLE001
            failed.append(name)
            traceback.print_exc()
    with open(os.path.join(out_dir, "report.json"), "w") as f:
        json.dump({"env": env, "models": report, "failed": failed}, f, indent=1)
    with tarfile.open(os.path.join(out_dir, "goldens.tar"), "w") as tar:
        for name in args.only.split(","):
            d = os.path.join(out_dir, name)
            if os.path.isdir(d):
                tar.add(d, arcname=name)
        tar.add(os.path.join(out_dir, "report.json"), arcname="report.json")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
