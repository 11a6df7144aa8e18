"""Tiny randomly-initialised models with the real architectures, for tests and offline demos.

Each builder returns a model object or saves it with `save_pretrained` to a folder that
the synthesizers then load by path — the same loading code as real weights. The CLIP
tokenizer is written from a character-level vocabulary made here (nothing downloaded).
"""

from __future__ import annotations

import json
import os
import string


def write_char_clip_tokenizer(folder: str) -> str:
    """A CLIPTokenizer whose vocabulary is single characters (BPE with no merges)."""
    from transformers import CLIPTokenizer

    os.makedirs(folder, exist_ok=True)
    chars = list(string.ascii_lowercase + string.digits + string.punctuation)
    vocab: dict[str, int] = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in chars:
        vocab.setdefault(c, len(vocab))
        vocab.setdefault(c + "</w>", len(vocab))
    with open(os.path.join(folder, "vocab.json"), "w") as f:
        json.dump(vocab, f)
    with open(os.path.join(folder, "merges.txt"), "w") as f:
        f.write("#version: 0.2\n")
    tok = CLIPTokenizer(os.path.join(folder, "vocab.json"), os.path.join(folder, "merges.txt"),
                        model_max_length=32, pad_token="<|endoftext|>")
    tok.save_pretrained(folder)
    return folder


def tiny_sd_components(unet_in_channels: int = 4, seed: int = 0) -> dict:
    """UNet / VAE / CLIP text encoder / scheduler sized for a CPU test (32x32 latents max)."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(16, 32), layers_per_block=1, sample_size=16, in_channels=unet_in_channels,
        out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32, attention_head_dim=4,
        norm_num_groups=8,
    )
    vae = AutoencoderKL(
        block_out_channels=(16, 32), in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=8,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
    )
    text = CLIPTextModel(CLIPTextConfig(
        vocab_size=200, hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
        max_position_embeddings=32, bos_token_id=0, eos_token_id=1, pad_token_id=1,
    ))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    return {"unet": unet, "vae": vae, "text_encoder": text, "scheduler": scheduler}


PIPELINES = {
    "img2img": ("StableDiffusionImg2ImgPipeline", 4),
    "instruct_pix2pix": ("StableDiffusionInstructPix2PixPipeline", 8),
    "inpaint": ("StableDiffusionInpaintPipeline", 9),
}


def _saved(model, proc, folder: str | None):
    """(model, processor), saved to `folder` first when one is given (safetensors weights)."""
    if folder:
        model.save_pretrained(folder, safe_serialization=True)
        proc.save_pretrained(folder)
    return model, proc


def build_tiny_pipeline(kind: str, folder: str | None = None, seed: int = 0):
    """A tiny diffusers pipeline of `kind` (img2img | instruct_pix2pix | inpaint); saved when
    `folder` is given."""
    import tempfile

    import diffusers

    cls_name, in_ch = PIPELINES[kind]
    tok_dir = write_char_clip_tokenizer(os.path.join(folder or tempfile.mkdtemp(), "tokenizer"))
    from transformers import CLIPTokenizer

    comps = tiny_sd_components(in_ch, seed)
    pipe = getattr(diffusers, cls_name)(
        **comps, tokenizer=CLIPTokenizer.from_pretrained(tok_dir), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )
    if folder:
        pipe.save_pretrained(folder, safe_serialization=True)
    return pipe


def build_tiny_dpt(folder: str | None = None, seed: int = 0):
    """A tiny DPT depth estimator (ViT backbone) and its image processor."""
    import torch
    from transformers import DPTConfig, DPTForDepthEstimation, DPTImageProcessor

    torch.manual_seed(seed)
    cfg = DPTConfig(
        image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
        intermediate_size=37, backbone_out_indices=[0, 1, 2, 3], neck_hidden_sizes=[16, 16, 32, 32],
        fusion_hidden_size=16, head_in_index=-1, reassemble_factors=[4, 2, 1, 0.5],
    )
    model = DPTForDepthEstimation(cfg).eval()
    proc = DPTImageProcessor(size={"height": 32, "width": 32}, keep_aspect_ratio=False)
    return _saved(model, proc, folder)


SEG_CLASSES = ("background", "person", "sky", "tree", "building", "road", "grass", "car", "dog", "chair")


def build_tiny_segformer(folder: str | None = None, seed: int = 0, num_labels: int = 8):
    """A tiny SegFormer semantic segmenter (ADE/COCO-like class names) and its image processor."""
    import torch
    from transformers import SegformerConfig, SegformerForSemanticSegmentation, SegformerImageProcessor

    torch.manual_seed(seed)
    cfg = SegformerConfig(
        num_encoder_blocks=4, depths=[1, 1, 1, 1], sr_ratios=[4, 2, 1, 1], hidden_sizes=[8, 16, 24, 32],
        num_attention_heads=[1, 1, 2, 2], decoder_hidden_size=16, num_labels=num_labels,
        id2label={i: SEG_CLASSES[i] if i < len(SEG_CLASSES) else f"class_{i}" for i in range(num_labels)},
        label2id={SEG_CLASSES[i] if i < len(SEG_CLASSES) else f"class_{i}": i for i in range(num_labels)},
    )
    model = SegformerForSemanticSegmentation(cfg).eval()
    proc = SegformerImageProcessor(size={"height": 32, "width": 32})
    return _saved(model, proc, folder)


def build_tiny_vitpose(folder: str | None = None, seed: int = 0):
    """A tiny ViTPose keypoint estimator (17 COCO keypoints, simple decoder) and its processor."""
    import torch
    from transformers import (
        VitPoseBackboneConfig,
        VitPoseConfig,
        VitPoseForPoseEstimation,
        VitPoseImageProcessor,
    )

    torch.manual_seed(seed)
    backbone = VitPoseBackboneConfig(image_size=[64, 48], patch_size=[8, 8], hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=4, mlp_ratio=2, part_features=8, out_indices=[2])
    model = VitPoseForPoseEstimation(VitPoseConfig(backbone_config=backbone, num_labels=17)).eval()
    proc = VitPoseImageProcessor(size={"height": 64, "width": 48})
    return _saved(model, proc, folder)


def build_tiny_detector(folder: str | None = None, seed: int = 0, labels: tuple[str, ...] = ("person",)):
    """A tiny YOLOS object detector whose classes are `labels` (e.g. person, face) and its processor.

    Initialised with a wide spread so its random boxes differ from one query to the next."""
    import torch
    from transformers import YolosConfig, YolosForObjectDetection, YolosImageProcessor

    torch.manual_seed(seed)
    cfg = YolosConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
                      image_size=[64, 64], patch_size=16, num_detection_tokens=6, initializer_range=0.5,
                      id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)})
    model = YolosForObjectDetection(cfg).eval()
    proc = YolosImageProcessor(size={"shortest_edge": 64, "longest_edge": 64})
    return _saved(model, proc, folder)


def build_tiny_sam(folder: str | None = None, seed: int = 0):
    """A tiny SAM (ViT image encoder, prompt encoder, two-way mask decoder) and its SamProcessor."""
    import torch
    from transformers import (
        SamConfig,
        SamImageProcessor,
        SamMaskDecoderConfig,
        SamModel,
        SamProcessor,
        SamPromptEncoderConfig,
        SamVisionConfig,
    )

    torch.manual_seed(seed)
    vision = SamVisionConfig(hidden_size=32, output_channels=16, num_hidden_layers=2, num_attention_heads=2,
                             image_size=64, patch_size=8, window_size=4, global_attn_indexes=[1], mlp_dim=64,
                             num_pos_feats=8)
    prompt = SamPromptEncoderConfig(hidden_size=16, image_size=64, patch_size=8, mask_input_channels=4)
    decoder = SamMaskDecoderConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, mlp_dim=32,
                                   iou_head_hidden_dim=16)
    model = SamModel(SamConfig(vision_config=vision, prompt_encoder_config=prompt,
                               mask_decoder_config=decoder)).eval()
    proc = SamProcessor(image_processor=SamImageProcessor(
        size={"longest_edge": 64}, pad_size={"height": 64, "width": 64},
        mask_size={"longest_edge": 16}, mask_pad_size={"height": 16, "width": 16}))
    return _saved(model, proc, folder)
