#!/usr/bin/env python3
"""diffusers on one GPU, the anchor of scripts/gpu-check.sh's benchmark (issue 12).

The SD-1.5 pipeline is built from the configs in bench/sd15 with random weights (diffusers'
and transformers' own initialisation; the speed does not depend on the values), in fp16 on
CUDA, DDIM 50 steps, guidance 7.5, one image. For each size it prints one line:

    diffusers eager 256x256: end to end 1.262 s, unet 24.3 ms/step, vae 2.1 ms, text 3.0 ms, peak 3.1 GiB

end to end = pipe(...) called with output_type "np" (text, 50 steps, VAE, the image on the
host), the best of --runs after one warm-up; unet = one UNet call on the CFG batch of 2,
CUDA-event timed, mean of 20 after 3 warm-ups; vae = vae.decode of one latent, likewise.
--compile adds torch.compile(mode="reduce-overhead") of the UNet (minutes to compile).

    python3 bench/diffusers_gpu.py [--sizes 256,512] [--runs 2] [--compile]
"""
import argparse
import os
import time

import torch
from diffusers import (AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
SD15 = os.path.join(HERE, "sd15")


def cuda_ms(fn, reps=20, warm=3):
    for _ in range(warm):
        fn()
    torch.cuda.synchronize()
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    for _ in range(reps):
        fn()
    b.record()
    torch.cuda.synchronize()
    return a.elapsed_time(b) / reps


def build():
    dev, dt = "cuda", torch.float16
    unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(os.path.join(SD15, "unet")))
    vae = AutoencoderKL.from_config(AutoencoderKL.load_config(os.path.join(SD15, "vae")))
    text = CLIPTextModel(CLIPTextConfig.from_pretrained(os.path.join(SD15, "text_encoder")))
    tok = CLIPTokenizer.from_pretrained(os.path.join(SD15, "tokenizer"))
    sched = DDIMScheduler.from_config(DDIMScheduler.load_config(os.path.join(SD15, "scheduler")))
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tok, unet=unet, scheduler=sched,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe = pipe.to(dev, dt)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="256,512")
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--compile", action="store_true")
    a = ap.parse_args()
    t0 = time.time()
    pipe = build()
    print(f"diffusers: {torch.cuda.get_device_name()}, torch {torch.__version__}, built in {time.time() - t0:.1f} s",
          flush=True)
    modes = [("eager", pipe.unet)]
    if a.compile:
        modes.append(("compile", torch.compile(pipe.unet, mode="reduce-overhead", fullgraph=True)))
    for mode, unet in modes:
        pipe.unet = unet
        for s in [int(x) for x in a.sizes.split(",")]:
            torch.cuda.reset_peak_memory_stats()
            g = torch.Generator("cuda").manual_seed(42)
            run = lambda: pipe("a photo of an astronaut riding a horse", height=s, width=s,  # noqa: E731
                               num_inference_steps=a.steps, guidance_scale=7.5, generator=g, output_type="np")
            run()  # warm-up (and compilation)
            best = 1e9
            for _ in range(a.runs):
                torch.cuda.synchronize()
                t = time.time()
                run()
                torch.cuda.synchronize()
                best = min(best, time.time() - t)
            L = s // 8
            x = torch.randn(2, 4, L, L, device="cuda", dtype=torch.float16)
            ctx = torch.randn(2, 77, 768, device="cuda", dtype=torch.float16)
            tt = torch.tensor([500], device="cuda")
            with torch.no_grad():
                u = cuda_ms(lambda: unet(x, tt, encoder_hidden_states=ctx))
                v = cuda_ms(lambda: pipe.vae.decode(x[:1] / 0.18215))
                ids = torch.zeros(2, 77, dtype=torch.long, device="cuda")
                te = cuda_ms(lambda: pipe.text_encoder(ids))
            peak = torch.cuda.max_memory_allocated() / 2**30
            print(f"diffusers {mode} {s}x{s}: end to end {best:.3f} s, unet {u:.2f} ms/step, vae {v:.2f} ms, "
                  f"text {te:.2f} ms, peak {peak:.2f} GiB", flush=True)


if __name__ == "__main__":
    main()
