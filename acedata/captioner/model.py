"""Loading the captioner through transformers' auto classes (InternVL, Qwen2-VL, LLaVA-style
image-text-to-text models alike), the tiny random-init InternVL built through the same
loader, and LoRA through `peft`. Weights come from local folders or the HF cache only."""

from __future__ import annotations

import json
import os
from pathlib import Path

from acedata.captioner.config import CaptionerConfig, LoraSpec, ModelSpec, TinySpec
from acedata.errors import ModelNotFound

SPECIALS = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>", "<img>", "</img>", "<IMG_CONTEXT>", "<video>"]
# Image parts render as InternVL's context token; the processor expands it to <img>...</img> per tile.
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}"
    "{% else %}{% for p in m['content'] %}{% if p['type'] == 'image' or p['type'] == 'image_url' %}<IMG_CONTEXT>"
    "{% elif p['type'] == 'text' %}{{ p['text'] }}{% endif %}{% endfor %}"
    "{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
TINY_MARKER = "acedata_tiny.json"


def _corpus() -> list[str]:
    """Text the tiny tokenizer is trained on: the captioner prompts and the template bank."""
    from acedata.instruct.captioner import CAPTIONER_PROMPT
    from acedata.instruct.export import captioner_prompt
    from acedata.instruct.templates import load_bank

    texts = [CAPTIONER_PROMPT, captioner_prompt(2), captioner_prompt(3), "Image-1: Image-2: Image-3:"]
    bank = load_bank(None)
    for fam in bank.families.values():
        texts += fam["default"] + [t for items in fam["subtasks"].values() for t in items]
    return texts * 4


def _tokenizer(specials: list[str], **extra):
    """A byte-level BPE tokenizer trained here on the captioner corpus."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(_corpus(), trainers.BpeTrainer(
        vocab_size=512, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="<|im_end|>",
                                   pad_token="</s>", **extra)


def build_tiny(out_dir: str | Path, spec: TinySpec) -> Path:
    out = Path(out_dir)
    if (out / TINY_MARKER).exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    (build_tiny_qwen2vl if spec.family == "qwen2_vl" else build_tiny_internvl)(out, spec)
    (out / TINY_MARKER).write_text(json.dumps({"random_init": True, **spec.model_dump()}))
    return out


QWEN_SPECIALS = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                 "<|image_pad|>", "<|video_pad|>"]
QWEN_TEMPLATE = CHAT_TEMPLATE.replace("<IMG_CONTEXT>", "<|vision_start|><|image_pad|><|vision_end|>")


def build_tiny_qwen2vl(out: Path, spec: TinySpec) -> None:
    """A random-init Qwen2-VL (dynamic-resolution patches, M-RoPE) with its processor."""
    import torch
    from transformers import (
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
        Qwen2VLVideoProcessor,
    )

    fast = _tokenizer(QWEN_SPECIALS)
    ids = fast.convert_tokens_to_ids
    side = spec.tile * 2  # at most (2 tiles)^2 worth of 14 px patches: a few merged tokens per image
    proc = Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessor(min_pixels=28 * 28, max_pixels=side * side, patch_size=14,
                                              merge_size=2),
        tokenizer=fast, video_processor=Qwen2VLVideoProcessor(), chat_template=QWEN_TEMPLATE)
    h = spec.hidden_size
    cfg = Qwen2VLConfig(
        text_config={"vocab_size": len(fast), "hidden_size": h, "intermediate_size": 2 * h,
                     "num_hidden_layers": spec.layers, "num_attention_heads": 2, "num_key_value_heads": 2,
                     "rope_scaling": {"type": "mrope", "mrope_section": [h // 16, h // 16 + h // 32, h // 16 + h // 32]},
                     "bos_token_id": fast.bos_token_id, "eos_token_id": fast.eos_token_id,
                     "pad_token_id": fast.pad_token_id},
        vision_config={"depth": 1, "embed_dim": 32, "hidden_size": h, "num_heads": 2, "patch_size": 14,
                       "spatial_merge_size": 2, "temporal_patch_size": 2},
        image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"))
    torch.manual_seed(spec.seed)
    model = Qwen2VLForConditionalGeneration(cfg)
    model.generation_config.eos_token_id = fast.eos_token_id
    model.generation_config.pad_token_id = fast.pad_token_id
    model.generation_config.bos_token_id = fast.bos_token_id
    model.save_pretrained(out)
    proc.save_pretrained(out)


def build_tiny_internvl(out_dir: str | Path, spec: TinySpec) -> Path:
    """A random-init InternVL (vision tower + Qwen2 LM), InternVL's processor (tiling included)
    and a chat template, saved as a model folder."""
    import torch
    from transformers import (
        GotOcr2ImageProcessor,
        InternVLConfig,
        InternVLForConditionalGeneration,
        InternVLProcessor,
        InternVLVideoProcessor,
    )

    out = Path(out_dir)
    fast = _tokenizer(SPECIALS, extra_special_tokens={
        "start_image_token": "<img>", "end_image_token": "</img>", "context_image_token": "<IMG_CONTEXT>",
        "video_token": "<video>"})
    side = {"height": spec.tile, "width": spec.tile}
    patch = max(2, spec.tile // 4)
    seq = ((spec.tile // patch) // 2) ** 2  # tokens per tile after InternVL's 0.5 pixel shuffle
    proc = InternVLProcessor(
        image_processor=GotOcr2ImageProcessor(size=side, crop_to_patches=spec.max_tiles > 1, min_patches=1,
                                              max_patches=spec.max_tiles),
        tokenizer=fast, video_processor=InternVLVideoProcessor(size=side), image_seq_length=seq,
        chat_template=CHAT_TEMPLATE)
    h = spec.hidden_size
    cfg = InternVLConfig(
        vision_config={"hidden_size": h, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 2 * h,
                           "image_size": spec.tile, "patch_size": patch},
        text_config={"model_type": "qwen2", "vocab_size": len(fast), "hidden_size": h, "intermediate_size": 2 * h,
                         "num_hidden_layers": spec.layers, "num_attention_heads": 2, "num_key_value_heads": 2,
                         "max_position_embeddings": 4096, "tie_word_embeddings": True,
                         "bos_token_id": fast.bos_token_id, "eos_token_id": fast.eos_token_id,
                         "pad_token_id": fast.pad_token_id},
        image_token_id=fast.context_image_token_id, image_seq_length=seq)
    torch.manual_seed(spec.seed)
    model = InternVLForConditionalGeneration(cfg)
    model.generation_config.eos_token_id = fast.eos_token_id
    model.generation_config.pad_token_id = fast.pad_token_id
    model.save_pretrained(out)
    proc.save_pretrained(out)
    return out


def resolve_path(spec: ModelSpec) -> str:
    """The local folder holding the weights; builds the tiny model when asked; never downloads."""
    if spec.tiny is not None:
        return str(build_tiny(spec.path, spec.tiny))
    if os.path.isdir(spec.path):
        if not os.path.exists(os.path.join(spec.path, "config.json")):
            raise ModelNotFound(spec.path, spec.path, "the folder has no config.json")
        return spec.path
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(spec.path, local_files_only=True)
    except Exception:  # noqa: BLE001 - not cached / not a repo id / offline: all mean "not here"
        from huggingface_hub.constants import HF_HUB_CACHE

        raise ModelNotFound(spec.path, [spec.path, HF_HUB_CACHE],
                            "give a local model folder in model.path or put the model in the HF cache") from None


def load_processor(path: str, trust_remote_code: bool = False):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(path, local_files_only=True, trust_remote_code=trust_remote_code)


def load_model(spec: ModelSpec, dtype=None):
    """(model, processor, local path) through AutoModelForImageTextToText."""
    import torch
    from transformers import AutoModelForImageTextToText

    path = resolve_path(spec)
    kw = {"attn_implementation": spec.attn_implementation} if spec.attn_implementation else {}
    model = AutoModelForImageTextToText.from_pretrained(
        path, local_files_only=True, trust_remote_code=spec.trust_remote_code, dtype=dtype or torch.float32, **kw)
    return model, load_processor(path, spec.trust_remote_code), path


def vision_modules(model) -> list:
    """The vision tower(s) of an image-text-to-text model (names differ per family)."""
    inner = getattr(model, "model", model)
    return [m for name in ("vision_tower", "visual", "vision_model") if (m := getattr(inner, name, None)) is not None]


def prepare_for_training(model, cfg: CaptionerConfig):
    """LoRA adapters (peft) on the language model, or full fine-tuning with the vision tower
    frozen when asked. Returns the module to train (a PeftModel under LoRA)."""
    if cfg.finetune == "lora":
        return add_lora(model, cfg.lora)
    if cfg.freeze_vision:
        for m in vision_modules(model):
            m.requires_grad_(False)
    return model


def add_lora(model, spec: LoraSpec):
    from peft import LoraConfig, get_peft_model

    lcfg = LoraConfig(r=spec.r, lora_alpha=spec.alpha, lora_dropout=spec.dropout,
                      target_modules=spec.target_modules, bias="none")
    return get_peft_model(model, lcfg)


def trainable_names(model) -> list[str]:
    return [n for n, p in model.named_parameters() if p.requires_grad]
