"""Tiny real models saved the way users save theirs (save_pretrained, state dicts), for the backbone tests.

Each function writes into ``folder`` and returns what ``fer extract --backbone/--weights`` takes. The
models are random (seeded) and a few kB to a few MB, so every family runs in seconds on a CPU.
"""

from __future__ import annotations

from pathlib import Path

import torch

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


def clip_vision(folder: Path, projection: bool = True) -> Path:
    """A CLIP vision tower (32 px, patch 8, width 32, projection 16) with its CLIPImageProcessor."""
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel, CLIPVisionModelWithProjection

    cfg = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8, projection_dim=16)
    torch.manual_seed(0)
    (CLIPVisionModelWithProjection if projection else CLIPVisionModel)(cfg).save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def dinov2(folder: Path) -> Path:
    """A DINOv2 (32 px crop of a 36 px resize, patch 8, width 32) with its BitImageProcessor."""
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    cfg = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2, image_size=32,
                       patch_size=8)
    torch.manual_seed(0)
    Dinov2Model(cfg).save_pretrained(folder)
    BitImageProcessor(size={"shortest_edge": 36}, crop_size={"height": 32, "width": 32}, do_center_crop=True,
                      resample=3, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD).save_pretrained(folder)
    return folder


def vit(folder: Path, layers: int = 3) -> Path:
    """A ViT (32 px, patch 8, width 32, ``layers`` blocks) with its ViTImageProcessor."""
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    cfg = ViTConfig(hidden_size=32, num_hidden_layers=layers, num_attention_heads=2, intermediate_size=64,
                    image_size=32, patch_size=8)
    torch.manual_seed(0)
    ViTModel(cfg, add_pooling_layer=False).save_pretrained(folder)
    processor = ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    processor.save_pretrained(folder)
    return folder


def torchvision_state_dict(path: Path, name: str = "mobilenet_v3_small") -> Path:
    """A torchvision model's full state dict (classifier included), as `torch.save(model.state_dict())` writes it.

    Its batch-norm statistics are calibrated on random images first: a freshly initialised MobileNet's
    features vanish (~1e-9), which would make any comparison of features meaningless."""
    from torchvision.models import get_model

    torch.manual_seed(0)
    model = get_model(name, weights=None).train()
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.momentum = None  # cumulative average over the calibration batches
    with torch.no_grad():
        for _ in range(2):
            model(torch.rand(8, 3, 96, 96))
    torch.save(model.state_dict(), path)
    return path


def timm_mae_checkpoint(path: Path, img_size: int = 32) -> Path:
    """A timm ViT-Tiny state dict laid out like MAE-Face's ``mae_face_pretrain_vit_base.pth``: wrapped in
    ``{"model": ...}``, no classifier head, plus an MAE decoder and mask token the encoder does not use."""
    import timm

    torch.manual_seed(0)
    m = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=img_size)
    state = dict(m.state_dict())
    state["mask_token"] = torch.zeros(1, 1, 16)
    state["decoder_embed.weight"] = torch.zeros(16, 192)
    state["decoder_pred.weight"] = torch.zeros(48, 16)
    torch.save({"model": state, "epoch": 1}, path)
    return path


def hubert(folder: Path) -> Path:
    """A HuBERT (width 32, 2 layers, layer-norm feature encoder) with its Wav2Vec2FeatureExtractor."""
    from transformers import HubertConfig, HubertModel, Wav2Vec2FeatureExtractor

    cfg = HubertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                       conv_dim=(16, 16, 16), conv_kernel=(10, 3, 2), conv_stride=(5, 2, 2), num_conv_pos_embeddings=16,
                       num_conv_pos_embedding_groups=2, feat_extract_norm="layer", do_stable_layer_norm=True)
    torch.manual_seed(0)
    HubertModel(cfg).save_pretrained(folder)
    Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=True).save_pretrained(folder)
    return folder


def whisper(folder: Path, window_s: int = 5) -> Path:
    """A Whisper (width 32, 2 encoder layers) whose encoder window is ``window_s`` seconds,
    with its feature extractor."""
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperModel

    cfg = WhisperConfig(d_model=32, encoder_layers=2, decoder_layers=1, encoder_attention_heads=2,
                        decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, num_mel_bins=80,
                        max_source_positions=window_s * 50, max_target_positions=16, vocab_size=64,
                        pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1)
    torch.manual_seed(0)
    WhisperModel(cfg).save_pretrained(folder)
    WhisperFeatureExtractor(feature_size=80, chunk_length=window_s).save_pretrained(folder)
    return folder
