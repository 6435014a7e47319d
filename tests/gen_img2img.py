#!/usr/bin/env python3
"""gen_img2img.py - reference outputs for image to image, made with diffusers'
StableDiffusionImg2ImgPipeline on the tiny sd1 fixture (tests/fixtures/models/sd1),
weights rounded to fp16 as ldm stores them, float32 compute, CPU generators.

Writes (developer machine only; the outputs are committed, CI needs no Python):
  fixtures/img/init64.png          a deterministic 64x64 RGB input image
  fixtures/img/init70x61.png       the same drawing at 70x61 (not a multiple of 8)
  fixtures/expected_img2img/*.safetensors, index.json:
    vae_encode       the encoder's latent distribution (mean, logvar) of init64.png
    run_<sched>_<s>  full runs: strength s, scheduler sched, 20 steps, guidance 7.5,
                     generator=torch.Generator("cpu").manual_seed(42)
Run with the stack to compare against, e.g. /opt/curenv/bin/python tests/gen_img2img.py
(diffusers 0.42, transformers 5, PyPI torch); the versions are recorded in index.json.
"""
import json
import os
import sys

import numpy as np
import PIL
import torch
from PIL import Image
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gen_fixtures as gf  # noqa: E402  (load_components, gen, SCHEDULERS)

import diffusers  # noqa: E402
from diffusers import StableDiffusionImg2ImgPipeline  # noqa: E402

IMG = os.path.join(gf.FIX, "img")
EXP = os.path.join(gf.FIX, "expected_img2img")
PROMPT = "a photo of a red cube on a table"
RUNS = [("pndm", 0.8), ("pndm", 0.5), ("euler_a", 0.8), ("euler_a", 0.35), ("ddim", 0.6),
        ("dpmpp_2m", 0.75)]


def drawing(w, h):
    """A smooth colourful test picture with edges (deterministic, no randomness)."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    r = 127.5 + 127.5 * np.sin(x / w * 6.0 + y / h * 1.5)
    g = 127.5 + 127.5 * np.cos(y / h * 5.0 - x / w * 2.0)
    b = np.where((x - w / 2) ** 2 + (y - h / 2) ** 2 < (min(w, h) / 3.2) ** 2, 230.0, 40.0)
    img = np.stack([r, g, b], -1)
    img[(x > w * 0.15) & (x < w * 0.3) & (y > h * 0.6)] = [250, 250, 20]
    return Image.fromarray(np.clip(img + 0.5, 0, 255).astype(np.uint8), "RGB")


def main():
    torch.set_num_threads(1)
    os.makedirs(IMG, exist_ok=True)
    os.makedirs(EXP, exist_ok=True)
    drawing(64, 64).save(os.path.join(IMG, "init64.png"))
    drawing(70, 61).save(os.path.join(IMG, "init70x61.png"))
    drawing(64, 64).save(os.path.join(IMG, "init64.jpg"), quality=90)
    drawing(64, 64).convert("L").save(os.path.join(IMG, "init64_gray.png"))
    rgba = drawing(64, 64).convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize((64, 64)))
    rgba.save(os.path.join(IMG, "init64_rgba.png"))
    init = Image.open(os.path.join(IMG, "init64.png")).convert("RGB")
    comp = gf.load_components("sd1")
    index = {"versions": {"diffusers": diffusers.__version__, "torch": torch.__version__,
                          "pillow": PIL.__version__, "numpy": np.__version__},
             "prompt": PROMPT, "seed": 42, "steps": 20, "guidance": 7.5,
             "bounds": {"vae_encode_rel_l2": 1e-4, "image_u8_max_abs_levels": 2,
                        "image_u8_mean_abs_levels": 0.5},
             "files": {}}

    # the encoder's distribution of the preprocessed image
    pipe = StableDiffusionImg2ImgPipeline(vae=comp["vae"], text_encoder=comp["text_encoder"],
                                          tokenizer=comp["tokenizer"], unet=comp["unet"],
                                          scheduler=comp["scheduler"], safety_checker=None,
                                          feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    x = pipe.image_processor.preprocess(init)  # [1,3,64,64] in [-1,1]
    with torch.no_grad():
        dist = comp["vae"].encode(x).latent_dist
    save_file({"image": x.contiguous(), "mean": dist.mean.contiguous(),
               "logvar": dist.logvar.contiguous()}, os.path.join(EXP, "vae_encode.safetensors"))
    index["files"]["vae_encode.safetensors"] = "image (preprocessed init64.png), mean, logvar"

    # non-multiple-of-8 input: the image processor rounds down to 64x56 and resizes (lanczos)
    odd = Image.open(os.path.join(IMG, "init70x61.png")).convert("RGB")
    xo = pipe.image_processor.preprocess(odd)
    save_file({"image": xo.contiguous()}, os.path.join(EXP, "preprocess_70x61.safetensors"))
    index["files"]["preprocess_70x61.safetensors"] = "image: init70x61.png preprocessed (%dx%d)" % (
        xo.shape[3], xo.shape[2])

    # a JPEG as PIL decodes it (ldm uses the same libjpeg-turbo defaults)
    xj = pipe.image_processor.preprocess(Image.open(os.path.join(IMG, "init64.jpg")).convert("RGB"))
    save_file({"image": xj.contiguous()}, os.path.join(EXP, "preprocess_jpeg.safetensors"))
    index["files"]["preprocess_jpeg.safetensors"] = "image: init64.jpg preprocessed"

    for sched_name, strength in RUNS:
        cls_name, overrides = gf.SCHEDULERS[sched_name]
        sched = getattr(diffusers, cls_name).from_config(comp["scheduler"].config, **overrides)
        pipe = StableDiffusionImg2ImgPipeline(vae=comp["vae"], text_encoder=comp["text_encoder"],
                                              tokenizer=comp["tokenizer"], unet=comp["unet"],
                                              scheduler=sched, safety_checker=None,
                                              feature_extractor=None, requires_safety_checker=False)
        pipe.set_progress_bar_config(disable=True)
        steps_lat = []

        def on_step_end(p, i, t, kw):
            steps_lat.append(kw["latents"].clone())
            return kw
        with torch.no_grad():
            out = pipe(PROMPT, image=init, strength=strength, num_inference_steps=20,
                       guidance_scale=7.5, generator=gf.gen(42), output_type="np",
                       callback_on_step_end=on_step_end,
                       callback_on_step_end_tensor_inputs=["latents"]).images
        u8 = (out * 255).round().astype("uint8")
        name = "run_%s_%g.safetensors" % (sched_name, strength)
        save_file({"image": torch.from_numpy(np.ascontiguousarray(u8)),
                   "latents_final": steps_lat[-1].contiguous(),
                   "timesteps": pipe.scheduler.timesteps.to(torch.float32)},
                  os.path.join(EXP, name))
        index["files"][name] = {"scheduler": sched_name, "strength": strength,
                                "unet_evaluations": len(steps_lat)}
        print(name, len(steps_lat), "steps")
    with open(os.path.join(EXP, "index.json"), "w") as f:
        json.dump(index, f, indent=1, sort_keys=True)
        f.write("\n")


if __name__ == "__main__":
    main()
