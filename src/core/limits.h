/* limits.h - the largest counts and sizes ldm accepts from the files it reads.
 *
 * Every count, dimension or size that comes from a file (a bundle's tar headers and
 * manifest, a safetensors header, a PNG header, a model config.json) is checked against
 * one of these where it is read, before it is used in an allocation or a multiplication,
 * and a value outside the range is refused with a message that names the file and the
 * field.  Sizes computed from such values use the checked arithmetic of common.h
 * (ldm_mul_size, ldm_add_size, ldm_mul_u64, ldm_add_u64).
 *
 * The table is documented, with the fields each limit applies to, in bundle/FORMAT.md
 * ("Limits").  The values are far above any Stable Diffusion model (SD 1.x / 2.x / XL use
 * at most 1280 channels, 2 resnet layers and 10 transformer layers per block, CLIP-bigG
 * 32 layers of width 1280 and 77 positions); they exist so that a damaged or hostile file
 * fails with a message instead of exhausting memory or overflowing an int.
 */
#ifndef LDM_LIMITS_H
#define LDM_LIMITS_H

#include <stdint.h>

/* ---- model configs (config.json of unet, vae, text_encoder) ---- */
/* Channels and widths: block_out_channels[i], in_channels, out_channels, latent_channels,
 * cross_attention_dim, norm_num_groups, attention_head_dim, num_attention_heads (UNet and
 * CLIP), hidden_size. */
#define LDM_MAX_CHANNELS 16384
/* Wide layers: intermediate_size (CLIP MLP), time_embedding_dim (UNet, default
 * 4 * block_out_channels[0]). */
#define LDM_MAX_WIDTH 65536
/* Layer counts: layers_per_block (UNet, VAE), transformer_layers_per_block (UNet),
 * num_hidden_layers (CLIP). */
#define LDM_MAX_LAYERS 64
/* Blocks: entries of down_block_types, up_block_types, block_out_channels. */
#define LDM_MAX_BLOCKS 8
/* UNet sample_size: the latent side of the default image (image side = sample_size * the
 * VAE factor, 8 for SD; ldmgen makes images of at most 8192 pixels a side). */
#define LDM_MAX_SAMPLE_SIZE 1024
/* CLIP max_position_embeddings (the prompt length in tokens, 77 for SD). */
#define LDM_MAX_POSITIONS 4096
/* CLIP vocab_size (49408 for SD). */
#define LDM_MAX_VOCAB (1 << 22)

/* ---- .ldmb bundles ---- */
/* Members other than weights.bin (configs, tokenizer files, the manifest), bytes. */
#define LDM_MAX_SMALL_MEMBER (256u << 20)
/* Dimensions of a bundle tensor, and the largest dimension and element count. */
#define LDM_MAX_TENSOR_DIMS 4
#define LDM_MAX_TENSOR_NUMEL (UINT64_C(1) << 40)
/* A member name (pax path or ustar prefix/name), bytes. */
#define LDM_MAX_MEMBER_NAME 511

/* ---- safetensors ---- */
/* The JSON header, bytes, and the dimensions of a tensor. */
#define LDM_MAX_ST_HEADER (100u * 1024 * 1024)
#define LDM_MAX_ST_DIMS 8

/* ---- PNG ---- */
/* Pixels of an image read (width * height), and the side of an image written. */
#define LDM_MAX_PNG_PIXELS (1u << 28)
#define LDM_MAX_PNG_SIDE 1000000
/* A chunk of a PNG read (its data, and a text chunk once inflated), bytes, and the number
 * of text and other ancillary chunks kept. */
#define LDM_MAX_PNG_CHUNK (8u << 20)
#define LDM_MAX_PNG_CHUNKS 1000

#endif
