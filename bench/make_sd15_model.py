#!/opt/refenv/bin/python
"""Build an SD-1.5-shaped diffusers folder with random weights, for benchmarks only.

Developer tool (torch 1.13, diffusers 0.25.1, transformers 4.36.2); not used by the tests.
The classes and configs are the real SD 1.5 ones (UNet2DConditionModel, AutoencoderKL,
CLIPTextModel ViT-L/14, PNDMScheduler), so the compute per step is exactly SD 1.5's; only
the weights are random: every Linear/Conv2d/Embedding weight ~ N(0, 0.02), biases 0, norms at
their defaults (weight 1, bias 0), which keeps activations finite in float16. The tokenizer is
the real CLIP BPE from tests/fixtures/clip. Weights are written as float16 safetensors by
StableDiffusionPipeline.save_pretrained (about 2 GB: keep the folder outside the repository).

    /opt/refenv/bin/python bench/make_sd15_model.py build/bench-sd15
    build/ldmpack build/bench-sd15 -o build/bench-sd15.ldmb
"""
import json
import os
import shutil
import sys

import torch
from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLIP_DIR = os.path.join(REPO, "tests", "fixtures", "clip")

# runwayml/stable-diffusion-v1-5 unet/config.json (the fields that differ from the defaults
# are spelled out anyway, so the file reads as the real config)
UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                      "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D",
                    "CrossAttnUpBlock2D"),
    attention_head_dim=8, cross_attention_dim=768, norm_num_groups=32, norm_eps=1e-5,
    act_fn="silu", center_input_sample=False, downsample_padding=1, flip_sin_to_cos=True,
    freq_shift=0, mid_block_scale_factor=1)

# runwayml/stable-diffusion-v1-5 vae/config.json
VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
    block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    act_fn="silu", norm_num_groups=32, sample_size=512, scaling_factor=0.18215)

# openai/clip-vit-large-patch14 text model
CLIP = dict(
    vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
    num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
    layer_norm_eps=1e-5, projection_dim=768, bos_token_id=0, eos_token_id=2, pad_token_id=1)

# runwayml/stable-diffusion-v1-5 scheduler/scheduler_config.json
SCHEDULER = dict(
    beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
    set_alpha_to_one=False, skip_prk_steps=True, steps_offset=1, trained_betas=None)


def small_init(model):
    """N(0, 0.02) weights, zero biases for Linear/Conv2d/Embedding; norms keep 1/0."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d, torch.nn.Embedding)):
                m.weight.normal_(0.0, 0.02)
                if getattr(m, "bias", None) is not None:
                    m.bias.zero_()
    return model


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: make_sd15_model.py OUTPUT_DIR")
    out = sys.argv[1]
    torch.manual_seed(1234)
    unet = small_init(UNet2DConditionModel(**UNET)).half()
    vae = small_init(AutoencoderKL(**VAE)).half()
    text = small_init(CLIPTextModel(CLIPTextConfig(**CLIP))).half()
    tok = CLIPTokenizer(os.path.join(CLIP_DIR, "vocab.json"), os.path.join(CLIP_DIR, "merges.txt"),
                        pad_token="<|endoftext|>", model_max_length=77)
    sched = PNDMScheduler(**SCHEDULER)
    if os.path.exists(out):
        shutil.rmtree(out)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tok, unet=unet,
                                   scheduler=sched, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(out, safe_serialization=True)
    # keep clip_sample=false as the real SD 1.5 scheduler config has it
    spath = os.path.join(out, "scheduler", "scheduler_config.json")
    cfg = json.load(open(spath))
    cfg.setdefault("clip_sample", False)
    with open(spath, "w") as f:
        json.dump(cfg, f, indent=2)
    # transformers 5 saves only tokenizer.json; older readers (OpenVINO's optimum-intel with
    # transformers 4) want the slow tokenizer's files too
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(os.path.join(CLIP_DIR, name), os.path.join(out, "tokenizer", name))
    n = lambda m: sum(p.numel() for p in m.parameters())
    print(f"{out}: unet {n(unet)/1e6:.1f}M, vae {n(vae)/1e6:.1f}M, text {n(text)/1e6:.1f}M params (fp16)")


if __name__ == "__main__":
    main()
