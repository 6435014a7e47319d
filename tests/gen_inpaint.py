#!/usr/bin/env python3
"""gen_inpaint.py - reference outputs for inpainting, made with diffusers'
StableDiffusionInpaintPipeline on the tiny fixtures, weights rounded to fp16 as ldm stores
them, float32 compute, CPU generators (one per image: seeds 42, 43, ...).

Two UNets: the ordinary 4-channel one of tests/fixtures/models/sd1 (diffusers blends the
noised init latents back outside the mask after every step) and a 9-channel inpainting
UNet, tests/fixtures/models/sd1_inpaint (latents + mask + masked-image latents, as
runwayml's and stabilityai's inpainting models are built; the other components are links
to sd1's).

Writes (developer machine only; the outputs are committed, CI needs no Python):
  fixtures/models/sd1_inpaint/   (with --model; random weights from a fixed seed, fp16)
  fixtures/img/mask64.png        64x64 grey mask: an ellipse with an anti-aliased rim and a
                                 band along the right edge (white = repaint)
  fixtures/img/mask80x72.png     an RGB mask of another size (resized as diffusers does)
  fixtures/<out>/*.safetensors, index.json:
    mask_<name>      the mask processor's output (mask_condition, [1, 1, 64, 64])
    run_<...>        full runs: image (uint8), latents_final, timesteps

Run with each stack to compare against:
  /opt/curenv/bin/python tests/gen_inpaint.py --model expected_inpaint      (diffusers 0.42)
  /opt/refenv/bin/python tests/gen_inpaint.py expected_inpaint_025          (diffusers 0.25.1)
(the model is written once, by the first command; the versions go to index.json).
"""
import json
import os
import shutil
import sys

import numpy as np
import PIL
import torch
from PIL import Image
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gen_fixtures as gf  # noqa: E402

import diffusers  # noqa: E402
from diffusers import StableDiffusionInpaintPipeline, UNet2DConditionModel  # noqa: E402

IMG = os.path.join(gf.FIX, "img")
PROMPT = "a photo of a red cube on a table"
NEG = "blurry"
# (model, scheduler, strength, batch, mask file)
RUNS = [
    ("sd1_inpaint", "pndm", 1.0, 1, "mask64.png"),
    ("sd1_inpaint", "euler_a", 0.75, 1, "mask64.png"),
    ("sd1_inpaint", "dpmpp_2m", 0.9, 2, "mask64.png"),
    ("sd1", "pndm", 1.0, 1, "mask64.png"),
    ("sd1", "euler_a", 0.6, 1, "mask64.png"),
    ("sd1", "ddim", 0.8, 2, "mask80x72.png"),
    ("sd1", "euler", 1.0, 1, "mask80x72.png"),
]


def make_model():
    unet_cfg, _, _, _ = gf.sd1_config()
    unet_cfg = dict(unet_cfg, in_channels=9)
    torch.manual_seed(1011)
    unet = UNet2DConditionModel(**unet_cfg).half()
    folder = os.path.join(gf.MODELS, "sd1_inpaint")
    if os.path.exists(folder):
        shutil.rmtree(folder)
    os.makedirs(folder)
    unet.save_pretrained(os.path.join(folder, "unet"), safe_serialization=True)
    for comp in ("vae", "text_encoder", "tokenizer", "scheduler"):
        os.symlink(os.path.join("..", "sd1", comp), os.path.join(folder, comp))
    idx = json.load(open(os.path.join(gf.MODELS, "sd1", "model_index.json")))
    idx["_class_name"] = "StableDiffusionInpaintPipeline"
    with open(os.path.join(folder, "model_index.json"), "w") as f:
        json.dump(idx, f, indent=2, sort_keys=True)
        f.write("\n")


def make_masks():
    y, x = np.mgrid[0:64, 0:64].astype(np.float64)
    # an ellipse whose rim ramps over ~3 pixels (values around 128 test the binarisation)
    d = np.sqrt(((x - 26) / 15.0) ** 2 + ((y - 30) / 11.0) ** 2)
    m = np.clip((1.15 - d) / 0.2, 0, 1) * 255
    m[:, 58:] = 255          # a band along the right edge
    m[60:, 58:] = 0          # ... that stops before the bottom
    Image.fromarray(np.round(m).astype(np.uint8), "L").save(os.path.join(IMG, "mask64.png"))
    y, x = np.mgrid[0:72, 0:80].astype(np.float64)
    r = np.where((x > 20) & (x < 55) & (y > 10) & (y < 50), 240, 10)
    g = np.where((x - 60) ** 2 + (y - 55) ** 2 < 150, 250, 0)
    rgb = np.stack([r, np.maximum(r, g), r], -1).astype(np.uint8)
    Image.fromarray(rgb, "RGB").save(os.path.join(IMG, "mask80x72.png"))


def pipeline(comp, sched_name):
    cls_name, overrides = gf.SCHEDULERS[sched_name]
    sched = getattr(diffusers, cls_name).from_config(comp["scheduler"].config, **overrides)
    pipe = StableDiffusionInpaintPipeline(vae=comp["vae"], text_encoder=comp["text_encoder"],
                                          tokenizer=comp["tokenizer"], unet=comp["unet"],
                                          scheduler=sched, safety_checker=None,
                                          feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def main():
    args = sys.argv[1:]
    if args and args[0] == "--model":
        make_model()
        make_masks()
        args = args[1:]
    out_name = args[0] if args else "expected_inpaint"
    exp = os.path.join(gf.FIX, out_name)
    os.makedirs(exp, exist_ok=True)
    torch.set_num_threads(1)
    init = Image.open(os.path.join(IMG, "init64.png")).convert("RGB")
    comps = {name: gf.load_components(name) for name in ("sd1", "sd1_inpaint")}
    index = {"versions": {"diffusers": diffusers.__version__, "torch": torch.__version__,
                          "pillow": PIL.__version__, "numpy": np.__version__},
             "prompt": PROMPT, "negative_prompt": NEG, "seed": 42, "steps": 12,
             "guidance": 7.5, "size": [64, 64],
             "bounds": {"latents_rel_l2": 1e-4, "image_u8_max_abs_levels": 2,
                        "image_u8_mean_abs_levels": 0.5},
             "files": {}}
    for mask_file in ("mask64.png", "mask80x72.png"):
        mask = Image.open(os.path.join(IMG, mask_file))
        pipe = pipeline(comps["sd1"], "pndm")
        mc = pipe.mask_processor.preprocess(mask, height=64, width=64)
        name = "mask_%s.safetensors" % mask_file[:-4]
        save_file({"mask": mc.contiguous()}, os.path.join(exp, name))
        index["files"][name] = "mask_condition of %s at 64x64" % mask_file

    for model, sched_name, strength, batch, mask_file in RUNS:
        pipe = pipeline(comps[model], sched_name)
        mask = Image.open(os.path.join(IMG, mask_file))
        lat = []

        def on_step_end(p, i, t, kw):
            lat.append(kw["latents"].clone())
            return kw
        with torch.no_grad():
            out = pipe(PROMPT, negative_prompt=NEG, image=init, mask_image=mask, height=64,
                       width=64, strength=strength, num_inference_steps=12, guidance_scale=7.5,
                       num_images_per_prompt=batch,
                       generator=[gf.gen(42 + i) for i in range(batch)], output_type="np",
                       callback_on_step_end=on_step_end,
                       callback_on_step_end_tensor_inputs=["latents"]).images
        u8 = (out * 255).round().astype("uint8")
        name = "run_%s_%s_%g_b%d_%s.safetensors" % (model, sched_name, strength, batch, mask_file[:-4])
        save_file({"image": torch.from_numpy(np.ascontiguousarray(u8)),
                   "latents_final": lat[-1].contiguous(),
                   "timesteps": pipe.scheduler.timesteps.to(torch.float32)},
                  os.path.join(exp, name))
        index["files"][name] = {"model": model, "scheduler": sched_name, "strength": strength,
                                "batch": batch, "mask": mask_file, "unet_evaluations": len(lat)}
        print(name, len(lat), "steps")
    with open(os.path.join(exp, "index.json"), "w") as f:
        json.dump(index, f, indent=1, sort_keys=True)
        f.write("\n")


if __name__ == "__main__":
    main()
