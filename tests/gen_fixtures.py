#!/usr/bin/env python3
"""Reference generator for ldm's test fixtures (developers only; CI never runs Python).

Regenerate everything under tests/fixtures/ with ONE command, from the repository root:

    /opt/refenv/bin/python tests/gen_fixtures.py

(/opt/refenv: torch 1.13 CPU, diffusers 0.25.1, transformers 4.36.2, safetensors; no ftfy,
no accelerate.)  The second generation of fixtures, made with the current releases, is
written by

    /opt/curenv/bin/python tests/gen_fixtures.py --current

(/opt/curenv: python3 -m venv /opt/curenv && /opt/curenv/bin/pip install torch diffusers
transformers safetensors; committed files from torch 2.15.0, diffusers 0.42.1, transformers
5.24.0): models/sd1_tf5 and expected_tf5/ only, see the "--current" section below.
Options: --models-only (just clip/ and models/), --expected-only (just
expected/, from the committed model folders), --odd-sizes-only (just the odd-size files of
gen_odd_sizes, added to the committed expected/ and its index.json; a full run writes the
same bytes).  The output is deterministic: random weights
come from fixed torch seeds, every reference run uses fixed generator seeds.

What it writes (see tests/fixtures/README.md and tests/fixtures/expected/index.json):
  clip/      copies of the real CLIP BPE files + tokenizer cases + prompts (from ../shared/clip)
  models/sd1 tiny SD 1.x-style diffusers folder, fp16 safetensors, PNDM scheduler
  models/sd2 tiny SD 2.x-style diffusers folder: fp32 UNet in 2 shards + index json,
             bf16 text encoder, v-prediction DDIM scheduler
  expected/  reference outputs (safetensors) + index.json describing every file/tensor/run
  with --current:
  models/sd1_tf5  tiny SD 1.x-style folder as diffusers 0.42 / transformers 5 write it
  expected_tf5/   its reference outputs, transformers 5 token ids, index.json

ldm stores weights in fp16 and computes in float32, so every reference output is computed
from weights rounded to fp16 and back (p.data = p.data.half().float()), in float32.
"""
import argparse
import json
import os
import shutil
import sys

import numpy as np
import torch
from safetensors.torch import load_file, save_file

import diffusers
import transformers
from diffusers import (AutoencoderKL, DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler,
                       EulerAncestralDiscreteScheduler, EulerDiscreteScheduler, PNDMScheduler,
                       StableDiffusionPipeline, UNet2DConditionModel)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

ROOT = os.path.dirname(os.path.abspath(__file__))
FIX = os.path.join(ROOT, "fixtures")
CLIP_SRC = os.environ.get("LDM_SHARED_CLIP", os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "clip"))
CLIP_DIR = os.path.join(FIX, "clip")
MODELS = os.path.join(FIX, "models")
EXP = os.path.join(FIX, "expected")

RUN_PROMPT = "a photo of an astronaut riding a horse on mars"

TOLERANCES = {
    "token_ids": "exact",
    "text_embeddings_rel_l2": 1e-4,
    "unet_call_rel_l2": 1e-4,
    "vae_decode_rel_l2": 1e-4,
    "image_u8_max_abs_levels": 2,
    "image_u8_mean_abs_levels": 0.5,
    "rel_l2_definition": "||a - b||_2 / ||b||_2 over all elements, b = reference",
}

# ----------------------------------------------------------------------------
# model folders


def sd1_config():
    unet = dict(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64),
                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), layers_per_block=2,
                attention_head_dim=8, cross_attention_dim=32, norm_num_groups=8)
    text = dict(vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                num_attention_heads=4, max_position_embeddings=77, hidden_act="quick_gelu")
    sched = {"_class_name": "PNDMScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear",
             "beta_start": 0.00085, "clip_sample": False, "num_train_timesteps": 1000,
             "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1,
             "trained_betas": None}
    return unet, text, sched, "<|endoftext|>"


def sd2_config():
    unet = dict(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64, 64),
                down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
                layers_per_block=1, attention_head_dim=(2, 4, 4), use_linear_projection=True,
                upcast_attention=True, cross_attention_dim=24, norm_num_groups=8)
    text = dict(vocab_size=49408, hidden_size=24, intermediate_size=48, num_hidden_layers=2,
                num_attention_heads=3, max_position_embeddings=77, hidden_act="gelu")
    sched = {"_class_name": "DDIMScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear",
             "beta_start": 0.00085, "clip_sample": False, "num_train_timesteps": 1000,
             "prediction_type": "v_prediction", "set_alpha_to_one": False, "skip_prk_steps": True,
             "steps_offset": 1, "timestep_spacing": "leading", "trained_betas": None}
    return unet, text, sched, "!"


VAE_CONFIG = dict(in_channels=3, out_channels=3, block_out_channels=(8, 16, 16, 16),
                  down_block_types=("DownEncoderBlock2D",) * 4,
                  up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=1,
                  latent_channels=4, norm_num_groups=4, sample_size=64, scaling_factor=0.18215)


def copy_clip():
    os.makedirs(CLIP_DIR, exist_ok=True)
    for f in ("vocab.json", "merges.txt", "cases.jsonl", "prompts.txt"):
        shutil.copyfile(os.path.join(CLIP_SRC, f), os.path.join(CLIP_DIR, f))


def make_tokenizer(pad):
    return CLIPTokenizer(os.path.join(CLIP_DIR, "vocab.json"), os.path.join(CLIP_DIR, "merges.txt"),
                         pad_token=pad, model_max_length=77)


def link_tokenizer_files(folder):
    """Replace tokenizer/vocab.json and merges.txt with relative symlinks into clip/."""
    tdir = os.path.join(folder, "tokenizer")
    for f in ("vocab.json", "merges.txt"):
        p = os.path.join(tdir, f)
        if os.path.lexists(p):
            os.remove(p)
        os.symlink(os.path.join("..", "..", "..", "clip", f), p)


def write_sharded(model_dir, n_shards=2):
    """Split model_dir/diffusion_pytorch_model.safetensors into n_shards files plus the
    index json that newer diffusers (>= 0.28) and transformers write.  diffusers 0.25 has no
    sharded save (its save_pretrained has no max_shard_size), so this is done by hand in the
    same format: diffusion_pytorch_model-0000K-of-0000N.safetensors and
    diffusion_pytorch_model.safetensors.index.json = {"metadata": {"total_size": bytes},
    "weight_map": {tensor name: shard file}}."""
    src = os.path.join(model_dir, "diffusion_pytorch_model.safetensors")
    sd = load_file(src)
    names = list(sd.keys())  # file order (sorted by safetensors)
    total = sum(t.numel() * t.element_size() for t in sd.values())
    shards, cur, cur_bytes = [], [], 0
    limit = total / n_shards
    for n in names:
        b = sd[n].numel() * sd[n].element_size()
        if cur and cur_bytes + b > limit and len(shards) < n_shards - 1:
            shards.append(cur)
            cur, cur_bytes = [], 0
        cur.append(n)
        cur_bytes += b
    shards.append(cur)
    assert len(shards) == n_shards
    weight_map = {}
    for k, group in enumerate(shards):
        fname = "diffusion_pytorch_model-%05d-of-%05d.safetensors" % (k + 1, n_shards)
        save_file({n: sd[n].contiguous() for n in group}, os.path.join(model_dir, fname),
                  metadata={"format": "pt"})
        for n in group:
            weight_map[n] = fname
    with open(os.path.join(model_dir, "diffusion_pytorch_model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))},
                  f, indent=2)
        f.write("\n")
    os.remove(src)


def fix_scheduler_config(folder, sched_cfg):
    """The scheduler config exactly as in the real SD checkpoints (keeps e.g. clip_sample=false,
    which PNDMScheduler does not know but DDIM reads through from_config)."""
    spath = os.path.join(folder, "scheduler", "scheduler_config.json")
    saved = json.load(open(spath))
    for k, v in sched_cfg.items():
        saved.setdefault(k, v)
    with open(spath, "w") as f:
        json.dump(dict(sorted(saved.items(), key=lambda kv: (kv[0] != "_class_name", kv[0]))),
                  f, indent=2)
        f.write("\n")


def build_model(name):
    unet_cfg, text_cfg, sched_cfg, pad = sd1_config() if name == "sd1" else sd2_config()
    base_seed = 1000 if name == "sd1" else 2000
    torch.manual_seed(base_seed + 1)
    unet = UNet2DConditionModel(**unet_cfg)
    torch.manual_seed(base_seed + 2)
    vae = AutoencoderKL(**VAE_CONFIG)
    torch.manual_seed(base_seed + 3)
    text = CLIPTextModel(CLIPTextConfig(**text_cfg))
    tok = make_tokenizer(pad)
    sched_cls = getattr(diffusers, sched_cfg["_class_name"])
    sched = sched_cls.from_config({k: v for k, v in sched_cfg.items() if k != "_class_name"})

    if name == "sd1":
        unet, vae, text = unet.half(), vae.half(), text.half()
    else:
        text = text.to(torch.bfloat16)

    folder = os.path.join(MODELS, name)
    if os.path.exists(folder):
        shutil.rmtree(folder)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tok, unet=unet,
                                   scheduler=sched, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(folder, safe_serialization=True)
    fix_scheduler_config(folder, sched_cfg)
    link_tokenizer_files(folder)
    if name == "sd2":
        write_sharded(os.path.join(folder, "unet"), 2)


# ----------------------------------------------------------------------------
# loading the fixture folders (fp16-rounded float32, as ldm computes)


def round_fp16_(module):
    with torch.no_grad():
        for p in module.parameters():
            p.data = p.data.half().float()
        for b in module.buffers():
            if b.is_floating_point():
                b.data = b.data.half().float()
    return module


def load_unet(folder):
    udir = os.path.join(folder, "unet")
    index = os.path.join(udir, "diffusion_pytorch_model.safetensors.index.json")
    if os.path.exists(index):
        # diffusers 0.25 cannot load sharded UNets: build from config, load merged shards
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(udir))
        wm = json.load(open(index))["weight_map"]
        sd = {}
        for fname in sorted(set(wm.values())):
            sd.update(load_file(os.path.join(udir, fname)))
        assert set(sd) == set(wm)
        missing, unexpected = unet.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True)
    else:
        unet = UNet2DConditionModel.from_pretrained(udir)
    return round_fp16_(unet.float().eval())


def load_components(name):
    folder = os.path.join(MODELS, name)
    unet = load_unet(folder)
    vae = round_fp16_(AutoencoderKL.from_pretrained(os.path.join(folder, "vae")).float().eval())
    text = round_fp16_(CLIPTextModel.from_pretrained(os.path.join(folder, "text_encoder"))
                       .float().eval())
    tok = CLIPTokenizer.from_pretrained(os.path.join(folder, "tokenizer"))
    sched_dir = os.path.join(folder, "scheduler")
    sched_cfg = json.load(open(os.path.join(sched_dir, "scheduler_config.json")))
    sched = getattr(diffusers, sched_cfg["_class_name"]).from_pretrained(sched_dir)
    return dict(unet=unet, vae=vae, text_encoder=text, tokenizer=tok, scheduler=sched)


# ----------------------------------------------------------------------------
# expected outputs

INDEX = {"files": {}, "runs": {}}


def gen(seed):
    return torch.Generator("cpu").manual_seed(seed)


def describe(name, t):
    dt = {torch.float32: "F32", torch.int32: "I32", torch.uint8: "U8", torch.int64: "I64"}[t.dtype]
    return {"dtype": dt, "shape": list(t.shape)}


def save_expected(fname, tensors, description, notes=None):
    tensors = {k: v.detach().contiguous() for k, v in tensors.items()}
    save_file(tensors, os.path.join(EXP, fname))
    entry = {"description": description,
             "tensors": {k: describe(k, v) for k, v in sorted(tensors.items())}}
    for k, v in (notes or {}).items():
        entry["tensors"][k]["note"] = v
    INDEX["files"][fname] = entry


def gen_rng():
    t = {}
    for s, n in [(0, 1), (42, 7), (42, 15), (42, 16), (42, 17), (1, 100), (123456789, 1000),
                 (18446744073709551615, 16)]:
        t["seed%d_n%d" % (s, n)] = torch.randn(n, generator=gen(s))
    t["seed42_shape_1x4x8x8"] = torch.randn((1, 4, 8, 8), generator=gen(42))
    g = gen(42)
    torch.randn((1, 4, 8, 8), generator=g)
    t["seed42_second_1x4x8x8"] = torch.randn((1, 4, 8, 8), generator=g)
    save_expected("rng.safetensors", t,
                  "torch.randn(shape, generator=torch.Generator('cpu').manual_seed(S)), float32. "
                  "seedS_nN: shape [N]; seed42_shape_1x4x8x8: shape (1,4,8,8); "
                  "seed42_second_1x4x8x8: the SECOND randn((1,4,8,8)) drawn from one generator "
                  "seeded 42 (the first draw is seed42_shape_1x4x8x8). 18446744073709551615 = "
                  "2**64-1 (max uint64 seed).")


def load_prompts():
    cases = [json.loads(l) for l in open(os.path.join(CLIP_DIR, "cases.jsonl"))]
    return cases


def gen_text(name, comp, cases, ids_from_tokenizer=False):
    """ids_from_tokenizer: use the folder tokenizer's ids (the --current folder has its own
    small vocabulary), else the BPE-correct ids of cases.jsonl."""
    tok, te = comp["tokenizer"], comp["text_encoder"]
    key = "input_ids_" + name
    t, quirks = {}, {}
    # transformers 5's CLIPTextModel has no .text_model wrapper (its modules are its own)
    final_ln = getattr(te, "text_model", te).final_layer_norm
    for i, c in enumerate(cases):
        ids_tf = tok(c["text"], padding="max_length", max_length=77, truncation=True).input_ids
        ids = ids_tf if ids_from_tokenizer else c[key]  # cases.jsonl: BPE-correct ids
        if ids_tf != ids:
            quirks[str(i)] = ids_tf
        ids = torch.tensor([ids], dtype=torch.int64)
        with torch.no_grad():
            out = te(ids, output_hidden_states=True)
            h1 = out.last_hidden_state
            h2 = final_ln(out.hidden_states[-2])
        t["ids_%d" % i] = ids.to(torch.int32)
        t["hidden_%d_skip1" % i] = h1
        t["hidden_%d_skip2" % i] = h2
    notes = {}
    desc = ("Text encoder of models/%s (weights rounded to fp16, computed in float32). For prompt i "
            "(index.json 'prompts'): ids_i = token ids [1,77] (padding to 77 with the pad token, "
            "truncation), hidden_i_skip1 = last_hidden_state [1,77,C], hidden_i_skip2 = "
            "final_layer_norm(hidden_states[-2]) (A1111 clip-skip 2 = diffusers clip_skip=1)." % name)
    if quirks:
        desc += (" NOTE: ids follow cases.jsonl (real CLIP BPE). transformers 4.36's slow CLIPTokenizer "
                 "with pad_token '!' treats '!' as an added special token and splits '!!!' into "
                 "single '!' tokens; those differing transformers ids are in index.json "
                 "'transformers_ids' and are NOT used here.")
        INDEX.setdefault("transformers_ids", {})[name] = quirks
    save_expected("%s_text.safetensors" % name, t, desc, notes)


def gen_unet(name, comp, seed):
    unet = comp["unet"]
    C = unet.config.cross_attention_dim
    g = gen(seed)
    x = torch.randn((2, 4, 8, 8), generator=g)
    ctx = torch.randn((2, 77, C), generator=g)
    t1 = torch.tensor([981.0])
    t2 = torch.tensor([1.0])
    with torch.no_grad():
        out = unet(x, t1, encoder_hidden_states=ctx).sample
        out2 = unet(x, t2, encoder_hidden_states=ctx).sample
    save_expected("%s_unet.safetensors" % name, dict(x=x, ctx=ctx, t=t1, t2=t2, out=out, out2=out2),
                  "One UNet call of models/%s (fp16-rounded weights, float32): out = unet(x, t, "
                  "encoder_hidden_states=ctx).sample, out2 = the same with timestep t2. t is broadcast "
                  "over the batch of 2. x and ctx are randn from one generator seeded %d (x first)."
                  % (name, seed))


def gen_unet_odd(name, comp, seed, shapes):
    """UNet calls at latent sizes that are not multiples of 2^(number of upsamplers)."""
    unet = comp["unet"]
    C = unet.config.cross_attention_dim
    g = gen(seed)
    ctx = torch.randn((2, 77, C), generator=g)
    t1 = torch.tensor([981.0])
    t = {"ctx": ctx, "t": t1}
    for k, (h, w) in enumerate(shapes):
        x = torch.randn((2, 4, h, w), generator=g)
        with torch.no_grad():
            t["out_%d" % k] = unet(x, t1, encoder_hidden_states=ctx).sample
        t["x_%d" % k] = x
    save_expected("%s_unet_odd.safetensors" % name, t,
                  "UNet calls of models/%s (fp16-rounded weights, float32) at latent sizes that are "
                  "not multiples of 2^(upsamplers): out_k = unet(x_k, t, encoder_hidden_states=ctx)"
                  ".sample, x_k [2,4,H,W] with (H,W) = %s for k = 0, 1, ...; diffusers downsamples "
                  "to ceil(H/2) and resizes each upsampler's output to the next skip's size. ctx "
                  "first, then x_0, x_1, ... are randn from one generator seeded %d."
                  % (name, ", ".join("(%d,%d)" % hw for hw in shapes), seed))


def gen_vae(name, comp, seed):
    vae = comp["vae"]
    z = torch.randn((1, 4, 8, 8), generator=gen(seed))
    with torch.no_grad():
        img = vae.decode(z).sample
    save_expected("%s_vae.safetensors" % name, dict(z=z, img=img),
                  "One VAE decode of models/%s (fp16-rounded weights, float32): img [1,3,64,64] = "
                  "vae.decode(z).sample, unclamped, range about [-1,1]; z is the value passed to "
                  "decode (latents already divided by scaling_factor). z = randn seed %d." % (name, seed))


SCHEDULERS = {
    "pndm": ("PNDMScheduler", {}),
    "ddim": ("DDIMScheduler", {}),
    "ddim_eta": ("DDIMScheduler", {}),
    "ddpm": ("DDPMScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "dpmpp_2m_karras": ("DPMSolverMultistepScheduler",
                        {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True}),
    "euler_karras": ("EulerDiscreteScheduler", {"use_karras_sigmas": True}),
    "ddim_trailing": ("DDIMScheduler", {"timestep_spacing": "trailing"}),
    "ddim_linspace": ("DDIMScheduler", {"timestep_spacing": "linspace"}),
}


def jsonable(v):
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, (np.floating, np.integer)):
        v = v.item()
    if isinstance(v, float) and not np.isfinite(v):
        return str(v)  # "-inf": strict JSON (jansson) has no Infinity/NaN
    return v


def gen_run(name, comp, run, sched_name, guidance=7.5, negative=None, clip_skip=None, eta=0.0,
            seeds=(42,), steps=20, size=64, width=None, height=None):
    width, height = width or size, height or size
    cls_name, overrides = SCHEDULERS[sched_name]
    base_cfg = comp["scheduler"].config
    sched = getattr(diffusers, cls_name).from_config(base_cfg, **overrides)
    pipe = StableDiffusionPipeline(vae=comp["vae"], text_encoder=comp["text_encoder"],
                                   tokenizer=comp["tokenizer"], unet=comp["unet"], scheduler=sched,
                                   safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    batch = len(seeds)
    prompt = RUN_PROMPT if batch == 1 else [RUN_PROMPT] * batch
    generator = gen(seeds[0]) if batch == 1 else [gen(s) for s in seeds]

    captured = {}
    orig_prepare = pipe.prepare_latents

    def prepare_latents(*a, **k):
        lat = orig_prepare(*a, **k)
        captured["init_scaled"] = lat.clone()
        return lat
    pipe.prepare_latents = prepare_latents
    steps_lat = []

    def on_step_end(p, i, t, kw):
        steps_lat.append(kw["latents"].clone())
        return kw

    kwargs = dict(guidance_scale=guidance, num_inference_steps=steps, height=height, width=width,
                  generator=generator, output_type="np", eta=eta,
                  callback_on_step_end=on_step_end, callback_on_step_end_tensor_inputs=["latents"])
    if negative is not None:
        kwargs["negative_prompt"] = negative if batch == 1 else [negative] * batch
    if clip_skip is not None:
        kwargs["clip_skip"] = clip_skip
    with torch.no_grad():
        image = pipe(prompt, **kwargs).images  # np float32 [B,64,64,3] in [0,1]

    # our own draw of the initial latents must equal what the pipeline drew
    init = torch.cat([torch.randn((1, 4, height // 8, width // 8), generator=gen(s)) for s in seeds])
    sigma0 = float(pipe.scheduler.init_noise_sigma)
    assert torch.equal(init * sigma0, captured["init_scaled"]), "latents_init mismatch"
    final = steps_lat[-1]
    # decoding latents_final must give image_f32 (checks the capture point)
    with torch.no_grad():
        dec = pipe.vae.decode(final / pipe.vae.config.scaling_factor).sample
    dec = (dec / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    assert np.array_equal(dec, image), "latents_final does not decode to the image"

    u8 = (image * 255).round().astype("uint8")
    t = {
        "image": torch.from_numpy(u8),
        "image_f32": torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)),
        "latents_init": init,
        "init_noise_sigma": torch.tensor([sigma0], dtype=torch.float32),
        "latents_final": final,
        "latents_steps": torch.stack(steps_lat),
        "timesteps": pipe.scheduler.timesteps.to(torch.float32),
    }
    if hasattr(pipe.scheduler, "sigmas") and pipe.scheduler.sigmas is not None:
        t["sigmas"] = torch.as_tensor(pipe.scheduler.sigmas).to(torch.float32)
    fname = "%s_run_%s.safetensors" % (name, run)
    save_expected(fname, t, "Full StableDiffusionPipeline run, parameters in index.json runs['%s_%s']."
                  % (name, run))
    n_iter = len(steps_lat)
    INDEX["runs"]["%s_%s" % (name, run)] = {
        "file": fname, "model": "models/" + name, "scheduler_name": sched_name,
        "scheduler_class": cls_name, "scheduler_overrides": overrides,
        "scheduler_config": {k: jsonable(v) for k, v in sorted(pipe.scheduler.config.items())
                             if not k.startswith("_")},
        "prompt": prompt, "negative_prompt": negative if negative is not None else "",
        "guidance_scale": guidance, "num_inference_steps": steps, "unet_evaluations": n_iter,
        "eta": eta, "seeds": list(seeds), "clip_skip_diffusers": clip_skip,
        "clip_skip_a1111": (clip_skip + 1) if clip_skip else 1,
        "width": width, "height": height, "batch": batch,
        "image_stats": {"mean": float(u8.mean()), "min": int(u8.min()), "max": int(u8.max()),
                        "frac_0_or_255": float(((u8 == 0) | (u8 == 255)).mean())},
    }
    print("run %s_%s: %d evals, image mean %.1f, saturated %.3f" %
          (name, run, n_iter, u8.mean(), ((u8 == 0) | (u8 == 255)).mean()))


RUN_TENSOR_NOTES = {
    "image": "U8 [B,64,64,3] = (image_f32*255).round().astype(uint8), as diffusers numpy_to_pil",
    "image_f32": "F32 [B,64,64,3] output_type='np': (vae.decode(latents_final/scaling_factor)/2+0.5).clamp(0,1), NHWC",
    "latents_init": "F32 [B,4,8,8] torch.randn((1,4,8,8), generator=manual_seed(seed_b)) per batch element b "
                    "(UNSCALED; the pipeline starts from latents_init*init_noise_sigma). Verified equal to "
                    "what the pipeline drew from its generator.",
    "init_noise_sigma": "F32 [1] scheduler.init_noise_sigma after set_timesteps",
    "latents_final": "F32 [B,4,8,8] latents after the last scheduler step (input to the VAE, before / scaling_factor)",
    "latents_steps": "F32 [n,B,4,8,8] latents after each scheduler step (n = unet_evaluations; PNDM with "
                     "skip_prk_steps runs 21 evaluations for 20 steps); the last equals latents_final",
    "timesteps": "F32 [n] scheduler.timesteps after set_timesteps(steps), the values passed to the UNet",
    "sigmas": "F32 [n+1] scheduler.sigmas (only for schedulers that have them; the last is 0)",
}


def gen_odd_sizes():
    """Sizes that are multiples of 8 but not of 8 * 2^(UNet upsamplers) (added later than the
    rest: written last, so the index keeps the earlier entries' order)."""
    comp = load_components("sd1")  # 2 levels: up factor 2
    gen_unet_odd("sd1", comp, 11, [(9, 9), (5, 7), (8, 3)])
    gen_run("sd1", comp, "pndm_72x56", "pndm", width=72, height=56)
    comp = load_components("sd2")  # 3 levels: up factor 4
    gen_unet_odd("sd2", comp, 12, [(9, 9), (10, 6), (8, 6)])


def run_notes(fname):
    """RUN_TENSOR_NOTES with the shapes of this run's size."""
    run = next(r for r in INDEX["runs"].values() if r["file"] == fname)
    w, h = run["width"], run["height"]
    notes = {}
    for k, v in RUN_TENSOR_NOTES.items():
        if (w, h) != (64, 64):
            v = v.replace("64,64", "%d,%d" % (h, w)).replace("4,8,8", "4,%d,%d" % (h // 8, w // 8))
        notes[k] = v
    return notes


def merge_index(odd_only):
    for f, e in INDEX["files"].items():
        if "_run_" in f:
            notes = run_notes(f)
            for k, v in e["tensors"].items():
                v["note"] = notes[k]
    if odd_only:  # add to the committed index
        with open(os.path.join(EXP, "index.json")) as f:
            index = json.load(f)
        for k in ("files", "runs"):
            index[k].update(INDEX[k])
        return index
    return None


def write_index(index):
    with open(os.path.join(EXP, "index.json"), "w") as f:
        json.dump(index, f, indent=1, ensure_ascii=False, allow_nan=False)
        f.write("\n")


def gen_expected(odd_only=False):
    if odd_only:
        gen_odd_sizes()
        write_index(merge_index(True))
        return
    if os.path.exists(EXP):
        shutil.rmtree(EXP)
    os.makedirs(EXP)
    cases = load_prompts()
    gen_rng()
    for name in ("sd1", "sd2"):
        comp = load_components(name)
        gen_text(name, comp, cases)
        gen_unet(name, comp, 7 if name == "sd1" else 8)
        gen_vae(name, comp, 9 if name == "sd1" else 10)
        runs = (["pndm", "ddim", "ddim_eta", "ddpm", "euler", "euler_a", "dpmpp_2m", "dpmpp_2m_karras",
                 "euler_karras", "ddim_trailing", "ddim_linspace"] if name == "sd1" else
                ["ddim", "euler", "euler_a", "dpmpp_2m", "pndm", "ddpm"])
        for r in runs:
            gen_run(name, comp, r, r, eta=0.5 if r == "ddim_eta" else 0.0)
        if name == "sd1":
            gen_run(name, comp, "pndm_g1", "pndm", guidance=1.0)
            gen_run(name, comp, "pndm_neg", "pndm", negative="blurry, low quality")
            gen_run(name, comp, "pndm_clipskip2", "pndm", clip_skip=1)
            gen_run(name, comp, "pndm_batch2", "pndm", seeds=(42, 43))
    gen_odd_sizes()
    merge_index(False)
    index = {
        "generator": "tests/gen_fixtures.py (run: /opt/refenv/bin/python tests/gen_fixtures.py)",
        "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__,
                     "transformers": transformers.__version__},
        "weights": "every output is computed from the model folder's weights rounded to fp16 and back "
                   "(p.data = p.data.half().float()), in float32, as ldm computes",
        "tolerances": TOLERANCES,
        "prompts": [c["text"] for c in cases],
        "run_prompt": RUN_PROMPT,
    }
    index.update(INDEX)
    write_index(index)


# ----------------------------------------------------------------------------
# --current: a folder written by the current releases (diffusers 0.42, transformers 5)
#
# transformers 5 saves the tokenizer as tokenizer.json + tokenizer_config.json only (no
# vocab.json / merges.txt / special_tokens_map.json) and CLIPTextModel weights without the
# "text_model." prefix.  To stay small the folder uses CLIP's BPE cut to its first
# TF5_MERGES merges: CLIP's vocab.json is the 256 byte tokens, the same with "</w>", then
# one token per merge in merge order, then <|startoftext|> <|endoftext|>, so the first
# 512 + TF5_MERGES tokens keep their CLIP ids and the specials move to 512 + TF5_MERGES
# and the next id.  The UNet is sd1's with half the channels.

TF5 = "sd1_tf5"
TF5_MERGES = 2000
EXP_TF5 = os.path.join(FIX, "expected_tf5")


# special-token text next to punctuation: transformers 5's pattern starts with
# <\|startoftext\|>|<\|endoftext\|>|, which ends a punctuation run there
TF5_EXTRA_TEXTS = ["a <|ENDOFTEXT|>!! b", "x<|StartOfText|>y <|endoftext|>. (<|ENDOFTEXT|>)",
                   "!<|ENDOFTEXT|>? <|startoftext|>, <|STARTOFTEXT|>'s"]


def tf5_vocab():
    vocab = json.load(open(os.path.join(CLIP_DIR, "vocab.json"), encoding="utf-8"))
    lines = open(os.path.join(CLIP_DIR, "merges.txt"), encoding="utf-8").read().split("\n")
    merges = [tuple(l.split(" ")) for l in lines[1:1 + TF5_MERGES]]
    inv = {i: t for t, i in vocab.items()}
    small = {inv[i]: i for i in range(512 + TF5_MERGES)}
    for i, (a, b) in enumerate(merges):
        assert small[a + b] == 512 + i, (a, b, i)
    small["<|startoftext|>"] = 512 + TF5_MERGES
    small["<|endoftext|>"] = 513 + TF5_MERGES
    return small, merges


def tf5_config():
    unet, text, sched, pad = sd1_config()
    unet = dict(unet, block_out_channels=(16, 32), attention_head_dim=4)
    n = 514 + TF5_MERGES
    text = dict(text, vocab_size=n, bos_token_id=n - 2, eos_token_id=n - 1, pad_token_id=n - 1)
    return unet, text, sched, pad


def build_model_tf5():
    unet_cfg, text_cfg, sched_cfg, pad = tf5_config()
    torch.manual_seed(3001)
    unet = UNet2DConditionModel(**unet_cfg).half()
    torch.manual_seed(3002)
    vae = AutoencoderKL(**VAE_CONFIG).half()
    torch.manual_seed(3003)
    text = CLIPTextModel(CLIPTextConfig(**text_cfg)).half()
    vocab, merges = tf5_vocab()
    tok = CLIPTokenizer(vocab=vocab, merges=merges, pad_token=pad, model_max_length=77)
    sched = PNDMScheduler.from_config({k: v for k, v in sched_cfg.items() if k != "_class_name"})
    folder = os.path.join(MODELS, TF5)
    if os.path.exists(folder):
        shutil.rmtree(folder)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tok, unet=unet,
                                   scheduler=sched, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(folder, safe_serialization=True)
    fix_scheduler_config(folder, sched_cfg)
    # what transformers 5 writes (the C side relies on exactly this)
    assert sorted(os.listdir(os.path.join(folder, "tokenizer"))) == ["tokenizer.json",
                                                                     "tokenizer_config.json"]
    from safetensors import safe_open
    with safe_open(os.path.join(folder, "text_encoder", "model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert keys and not any(k.startswith("text_model.") for k in keys), keys[:3]


def tf5_tokenizer_files(tok):
    """tokenizer_config.json and tokenizer.json's added_tokens as save_pretrained writes them."""
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        tok.save_pretrained(d)
        assert sorted(os.listdir(d)) == ["tokenizer.json", "tokenizer_config.json"]
        cfg = json.load(open(os.path.join(d, "tokenizer_config.json")))
        added = json.load(open(os.path.join(d, "tokenizer.json"), encoding="utf-8"))["added_tokens"]
    return {"tokenizer_config": cfg, "added_tokens": added}


def tf5_encode_cases(sd1, sd2, texts):
    out = []
    for text in texts:
        enc = lambda tok: tok(text, padding="max_length", max_length=77, truncation=True)["input_ids"]
        out.append({"text": text, "bpe": sd1(text, add_special_tokens=False)["input_ids"],
                    "input_ids_sd1": enc(sd1), "input_ids_sd2": enc(sd2)})
    return out


def write_jsonl(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def gen_tf5_tokenizer(index):
    """Token ids from transformers 5 for every text of cases.jsonl and extra_cases.jsonl:
    tokenizer_cases.jsonl with the folder's small vocabulary (sd2 = the same with pad "!"),
    tokenizer_cases_clip.jsonl with the full CLIP vocabulary (clip/vocab.json, merges.txt),
    compared with the committed transformers 4.36 ids (differences listed in index.json)."""
    rows = [json.loads(l) for f in ("cases.jsonl", "extra_cases.jsonl")
            for l in open(os.path.join(CLIP_DIR, f), encoding="utf-8")]
    texts = [r["text"] for r in rows] + TF5_EXTRA_TEXTS
    tdir = os.path.join(MODELS, TF5, "tokenizer")
    sd1 = CLIPTokenizer.from_pretrained(tdir)
    vocab, merges = tf5_vocab()
    sd2 = CLIPTokenizer(vocab=vocab, merges=merges, pad_token="!", model_max_length=77)
    write_jsonl(os.path.join(EXP_TF5, "tokenizer_cases.jsonl"), tf5_encode_cases(sd1, sd2, texts))
    cv, cm = os.path.join(CLIP_DIR, "vocab.json"), os.path.join(CLIP_DIR, "merges.txt")
    c1 = CLIPTokenizer(cv, cm, model_max_length=77)
    c2 = CLIPTokenizer(cv, cm, pad_token="!", model_max_length=77)
    clip_rows = tf5_encode_cases(c1, c2, texts)
    write_jsonl(os.path.join(EXP_TF5, "tokenizer_cases_clip.jsonl"), clip_rows)
    variants = {"sd2": tf5_tokenizer_files(sd2), "clip_sd1": tf5_tokenizer_files(c1),
                "clip_sd2": tf5_tokenizer_files(c2)}
    with open(os.path.join(EXP_TF5, "tokenizer_variants.json"), "w", encoding="utf-8") as f:
        json.dump(variants, f, indent=1, ensure_ascii=False)
        f.write("\n")
    diffs = []
    for old, new in zip(rows, clip_rows):
        for k in ("bpe", "input_ids_sd1", "input_ids_sd2"):
            if old[k] != new[k]:
                diffs.append({"text": old["text"], "field": k, "transformers_4_36": old[k],
                              "transformers_5": new[k]})
    index["tokenizer"] = {
        "texts": len(texts), "small_vocab_merges": TF5_MERGES, "small_vocab_size": len(vocab),
        "files": {
            "tokenizer_cases.jsonl": "ids of models/%s/tokenizer (transformers 5, CLIPTokenizer.from_pretrained) "
                                     "for every text of clip/cases.jsonl, then clip/extra_cases.jsonl, then "
                                     "%d texts with special-token text next to punctuation; "
                                     "input_ids_sd2: the same vocabulary with pad_token '!'"
                                     % (TF5, len(TF5_EXTRA_TEXTS)),
            "tokenizer_cases_clip.jsonl": "the same texts with transformers 5's CLIPTokenizer(clip/vocab.json, "
                                          "clip/merges.txt) (sd2: pad_token '!')",
            "tokenizer_variants.json": "tokenizer_config.json and tokenizer.json 'added_tokens' that "
                                       "save_pretrained writes for the other tokenizers (sd2: small vocabulary, "
                                       "pad '!'; clip_sd1 / clip_sd2: full CLIP vocabulary)"},
        "clip_vs_cases": "transformers 5 (full CLIP vocabulary, from vocab.json/merges.txt) against the "
                         "committed clip/*.jsonl ids: %d of %d texts x 3 encodings differ (listed; the "
                         "cases.jsonl sd2 line with '!' is the known transformers quirk, see clip/README)"
                         % (len(diffs), len(texts)),
        "clip_differences": diffs,
    }
    print("tokenizer: %d texts, %d differences from the committed 4.36 ids" % (len(texts), len(diffs)))


def gen_current():
    global EXP, INDEX
    import safetensors
    import tokenizers
    EXP = EXP_TF5
    INDEX = {"files": {}, "runs": {}}
    build_model_tf5()
    if os.path.exists(EXP):
        shutil.rmtree(EXP)
    os.makedirs(EXP)
    index = {}
    gen_tf5_tokenizer(index)
    cases = load_prompts()
    comp = load_components(TF5)
    gen_text(TF5, comp, cases, ids_from_tokenizer=True)
    gen_unet(TF5, comp, 13)
    gen_vae(TF5, comp, 14)
    for r in ("pndm", "euler_a"):
        gen_run(TF5, comp, r, r)
    merge_index(False)
    out = {
        "generator": "tests/gen_fixtures.py --current (run: /opt/curenv/bin/python tests/gen_fixtures.py "
                     "--current, a venv with pip install torch diffusers transformers safetensors)",
        "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__,
                     "transformers": transformers.__version__, "tokenizers": tokenizers.__version__,
                     "safetensors": safetensors.__version__, "numpy": np.__version__,
                     "python": sys.version.split()[0]},
        "model": "models/%s: sd1's configs written by the current releases, with a UNet of half the "
                 "channels (block_out_channels (16, 32), attention_head_dim 4) and CLIP's BPE cut to "
                 "its first %d merges (vocab_size %d)" % (TF5, TF5_MERGES, 514 + TF5_MERGES),
        "weights": "every output is computed from the model folder's weights rounded to fp16 and back "
                   "(p.data = p.data.half().float()), in float32, as ldm computes",
        "tolerances": TOLERANCES,
        "prompts": [c["text"] for c in cases],
        "run_prompt": RUN_PROMPT,
    }
    out.update(index)
    out.update(INDEX)
    write_index(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models-only", action="store_true")
    ap.add_argument("--expected-only", action="store_true")
    ap.add_argument("--odd-sizes-only", action="store_true",
                    help="only the odd-size files (gen_odd_sizes), added to the committed expected/")
    ap.add_argument("--current", action="store_true",
                    help="only models/%s and expected_tf5/, with the current releases" % TF5)
    args = ap.parse_args()
    if args.current:
        torch.set_num_threads(1)
        gen_current()
        print("current-release fixtures written")
        return
    if args.odd_sizes_only:
        torch.set_num_threads(1)
        gen_expected(odd_only=True)
        print("odd sizes written")
        return
    torch.set_num_threads(1)
    if not args.expected_only:
        copy_clip()
        for m in ("sd1", "sd2"):
            build_model(m)
        for m in ("sd1", "sd2"):
            load_components(m)  # they must load
        print("models written")
    if args.models_only:
        return
    gen_expected()
    print("expected written")


if __name__ == "__main__":
    main()
