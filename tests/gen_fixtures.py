#!/usr/bin/env python3
"""Reference generator for ldm's test fixtures (developers only; CI never runs Python).

Regenerate everything under tests/fixtures/ with ONE command, from the repository root:

    /opt/refenv/bin/python tests/gen_fixtures.py

(/opt/refenv: torch 1.13 CPU, diffusers 0.25.1, transformers 4.36.2, safetensors; no ftfy,
no accelerate.)  Options: --models-only (just clip/ and models/), --expected-only (just
expected/, from the committed model folders).  The output is deterministic: random weights
come from fixed torch seeds, every reference run uses fixed generator seeds.

What it writes (see tests/fixtures/README.md and tests/fixtures/expected/index.json):
  clip/      copies of the real CLIP BPE files + tokenizer cases + prompts (from /work/shared/clip)
  models/sd1 tiny SD 1.x-style diffusers folder, fp16 safetensors, PNDM scheduler
  models/sd2 tiny SD 2.x-style diffusers folder: fp32 UNet in 2 shards + index json,
             bf16 text encoder, v-prediction DDIM scheduler
  expected/  reference outputs (safetensors) + index.json describing every file/tensor/run

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
CLIP_SRC = "/work/shared/clip"
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
    # the scheduler config exactly as in the real SD checkpoints (keeps e.g. clip_sample=false,
    # which PNDMScheduler does not know but DDIM reads through from_config)
    spath = os.path.join(folder, "scheduler", "scheduler_config.json")
    saved = json.load(open(spath))
    for k, v in sched_cfg.items():
        saved.setdefault(k, v)
    with open(spath, "w") as f:
        json.dump(dict(sorted(saved.items(), key=lambda kv: (kv[0] != "_class_name", kv[0]))),
                  f, indent=2)
        f.write("\n")
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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models-only", action="store_true")
    ap.add_argument("--expected-only", action="store_true")
    args = ap.parse_args()
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
    import gen_expected  # noqa: F401  (second half, below)


if __name__ == "__main__":
    main()
