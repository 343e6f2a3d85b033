"""The dataset stages' networks at full size with random weights, for `bench/dataset_gpu.py`.

No weights can be downloaded here, and throughput does not depend on their values. What
stands in for what:

- SAM ViT-H: transformers `SamModel` with facebook/sam-vit-huge's sizes (the stage's model
  class, exact architecture).
- InternVL2-26B: transformers `InternVLForConditionalGeneration` with InternViT-6B-448px-V1-5's
  vision sizes (45 layers, 3200 wide, 25 heads, QK-norm, RMSNorm), the pixel-shuffle MLP
  projector, and a Llama decoder with InternLM2-20B's sizes (48 layers, 6144 wide, 48 heads,
  8 KV heads, 16384 MLP, 92553 tokens). InternLM2's own modelling code is remote code that
  cannot be fetched here; its layers compute what Llama's do (fused QKV aside).
- ArcFace R100 (antelopev2's glintr100): insightface's IResNet-100, exact architecture, in torch
  (the stage runs it in ONNX Runtime).
- SCRFD-10GF (antelopev2's detector): an approximation in torch of its published layout
  (basic-block ResNet, stages 3/4/2/3 of 56/88/88/224 channels, PAFPN of 56, a shared head of
  three 80-channel convs with score, box and 5-point outputs per level, 2 anchors).
- RTMW-x 384x288 (the pose model): an approximation in torch: CSPNeXt at RTMW-x's widen 1.25
  and deepen 1.33 and an RTMCC-style SimCC head (7x7 conv to 133 keypoints, MLP, GAU-sized
  linear layers, x and y classifiers); RTMW's PAFPN neck is left out.

`scale="smoke"` gives the same builders at tiny sizes for the CPU smoke run.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

Scale = Literal["full", "smoke"]
NUM_KEYPOINTS = 133
POSE_INPUT = (384, 288)  # (height, width)


def _conv_bn(cin: int, cout: int, k: int = 3, s: int = 1, groups: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, k, s, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]


class IBasicBlock(nn.Module):
    """insightface's IResNet block: BN, conv, BN, PReLU, strided conv, BN, plus the shortcut."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.BatchNorm2d(cin),
            *_conv_bn(cin, cout),
            nn.PReLU(cout),
            *_conv_bn(cout, cout, s=stride),
        )
        self.shortcut = (
            nn.Sequential(*_conv_bn(cin, cout, k=1, s=stride))
            if stride != 1 or cin != cout
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + self.shortcut(x)


def arcface_r100(scale: Scale = "full") -> nn.Module:
    """IResNet-100 (112x112 face crops to 512-d embeddings)."""
    layers, widths = ((3, 13, 30, 3), (64, 128, 256, 512))
    if scale == "smoke":
        layers, widths = (1, 1, 1, 1), (8, 8, 16, 16)
    blocks: list[nn.Module] = [*_conv_bn(3, widths[0]), nn.PReLU(widths[0])]
    cin = widths[0]
    for n, width in zip(layers, widths, strict=True):
        for i in range(n):
            blocks.append(IBasicBlock(cin, width, 2 if i == 0 else 1))
            cin = width
    blocks += [nn.BatchNorm2d(cin), nn.Flatten(), nn.Linear(cin * 7 * 7, 512), nn.BatchNorm1d(512)]
    return nn.Sequential(*blocks)


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(*_conv_bn(cin, cout, s=stride), nn.ReLU(), *_conv_bn(cout, cout))
        self.shortcut = (
            nn.Sequential(
                nn.AvgPool2d(stride) if stride > 1 else nn.Identity(), *_conv_bn(cin, cout, k=1)
            )
            if stride != 1 or cin != cout
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.shortcut(x))


class ScrfdLike(nn.Module):
    """SCRFD-10GF's layout: ResNet-v1e backbone, PAFPN, shared conv head on strides 8/16/32."""

    def __init__(self, scale: Scale = "full") -> None:
        super().__init__()
        blocks, planes, neck, head = (3, 4, 2, 3), (56, 88, 88, 224), 56, 80
        if scale == "smoke":
            blocks, planes, neck, head = (1, 1, 1, 1), (8, 8, 8, 16), 8, 8
        stem = planes[0] // 2
        self.stem = nn.Sequential(
            *_conv_bn(3, stem, s=2),
            nn.ReLU(),
            *_conv_bn(stem, stem),
            nn.ReLU(),
            *_conv_bn(stem, planes[0]),
            nn.ReLU(),
            nn.MaxPool2d(3, 2, 1),
        )
        self.stages = nn.ModuleList()
        cin = planes[0]
        for i, (n, width) in enumerate(zip(blocks, planes, strict=True)):
            stage = [
                BasicBlock(cin if j == 0 else width, width, 2 if i and not j else 1)
                for j in range(n)
            ]
            self.stages.append(nn.Sequential(*stage))
            cin = width
        self.lateral = nn.ModuleList(nn.Conv2d(c, neck, 1) for c in planes[1:])
        self.fpn = nn.ModuleList(nn.Sequential(*_conv_bn(neck, neck), nn.ReLU()) for _ in range(3))
        self.down = nn.ModuleList(
            nn.Sequential(*_conv_bn(neck, neck, s=2), nn.ReLU()) for _ in range(2)
        )
        self.pafpn = nn.ModuleList(
            nn.Sequential(*_conv_bn(neck, neck), nn.ReLU()) for _ in range(2)
        )
        self.head = nn.Sequential(
            *(m for i in range(3) for m in (*_conv_bn(neck if i == 0 else head, head), nn.ReLU()))
        )
        self.outputs = nn.ModuleList(nn.Conv2d(head, 2 * c, 3, padding=1) for c in (1, 4, 10))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        x = self.stem(x)
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i:
                features.append(x)
        laterals = [conv(f) for conv, f in zip(self.lateral, features, strict=True)]
        for i in (2, 1):  # top-down
            laterals[i - 1] = laterals[i - 1] + nn.functional.interpolate(
                laterals[i], scale_factor=2.0
            )
        levels = [conv(f) for conv, f in zip(self.fpn, laterals, strict=True)]
        for i in (0, 1):  # bottom-up
            levels[i + 1] = self.pafpn[i](levels[i + 1] + self.down[i](levels[i]))
        shared = [self.head(level) for level in levels]
        return [out(level) for out in self.outputs for level in shared]


class CspNextBlock(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            *_conv_bn(c, c),
            nn.SiLU(),
            *_conv_bn(c, c, k=5, groups=c),
            nn.SiLU(),
            *_conv_bn(c, c, k=1),
            nn.SiLU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class CspLayer(nn.Module):
    """CSPNeXt's stage: two 1x1 branches, blocks on one, channel attention, 1x1 fuse."""

    def __init__(self, cin: int, cout: int, n: int) -> None:
        super().__init__()
        mid = cout // 2
        self.main = nn.Sequential(
            *_conv_bn(cin, mid, k=1), nn.SiLU(), *(CspNextBlock(mid) for _ in range(n))
        )
        self.short = nn.Sequential(*_conv_bn(cin, mid, k=1), nn.SiLU())
        self.attention = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Conv2d(2 * mid, 2 * mid, 1), nn.Hardsigmoid()
        )
        self.fuse = nn.Sequential(*_conv_bn(2 * mid, cout, k=1), nn.SiLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.cat([self.main(x), self.short(x)], dim=1)
        return self.fuse(y * self.attention(y))


class RtmwLike(nn.Module):
    """CSPNeXt backbone and an RTMCC-style SimCC head: (N, 3, 384, 288) to SimCC logits
    (N, 133, 576) and (N, 133, 768)."""

    def __init__(self, scale: Scale = "full") -> None:
        super().__init__()
        widen, deepen, hidden = 1.25, 1.33, 256
        if scale == "smoke":
            widen, deepen, hidden = 0.125, 0.33, 16
        width = [round(c * widen) for c in (64, 128, 256, 512, 1024)]
        depth = [max(round(n * deepen), 1) for n in (3, 6, 6, 3)]
        self.backbone = nn.Sequential(
            *_conv_bn(3, width[0] // 2, s=2),
            nn.SiLU(),
            *_conv_bn(width[0] // 2, width[0] // 2),
            nn.SiLU(),
            *_conv_bn(width[0] // 2, width[0]),
            nn.SiLU(),
            *(
                m
                for i in range(4)
                for m in (
                    *_conv_bn(width[i], width[i + 1], s=2),
                    nn.SiLU(),
                    CspLayer(width[i + 1], width[i + 1], depth[i]),
                )
            ),
        )
        height, wide = POSE_INPUT
        self.final = nn.Conv2d(width[-1], NUM_KEYPOINTS, 7, padding=3)
        self.mlp = nn.Linear((height // 32) * (wide // 32), hidden)
        # The GAU's projections at RTMCC's sizes (expansion 2, attention width 128).
        self.gau = nn.Sequential(nn.Linear(hidden, 4 * hidden + 128), nn.SiLU())
        self.gau_out = nn.Linear(2 * hidden, hidden)
        self.cls_x = nn.Linear(hidden, 2 * wide)
        self.cls_y = nn.Linear(hidden, 2 * height)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = self.mlp(self.final(self.backbone(x)).flatten(2))
        u, v, _ = self.gau(tokens).split([2 * tokens.shape[-1], 2 * tokens.shape[-1], 128], dim=-1)
        tokens = tokens + self.gau_out(u * v)
        return self.cls_x(tokens), self.cls_y(tokens)


def sam_config(scale: Scale = "full"):
    """facebook/sam-vit-huge's sizes (transformers' defaults are ViT-B's encoder)."""
    from transformers import SamConfig

    if scale == "smoke":
        from perception.segmentation import SamSegmenter

        return SamSegmenter.tiny().model.config
    return SamConfig(
        vision_config={
            "hidden_size": 1280,
            "num_hidden_layers": 32,
            "num_attention_heads": 16,
            "global_attn_indexes": [7, 15, 23, 31],
            "mlp_dim": 5120,
        }
    )


INTERNVL_IMAGE_TOKEN = 92546  # InternVL2's <IMG_CONTEXT> in InternLM2's vocabulary


def internvl2_26b_config(scale: Scale = "full"):
    """InternVL2-26B's sizes: InternViT-6B-448px-V1-5 + MLP projector + InternLM2-20B (as Llama)."""
    from transformers import InternVLConfig, InternVLVisionConfig, LlamaConfig

    if scale == "smoke":
        vision = {
            "hidden_size": 16,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "intermediate_size": 32,
        }
        text = {
            "hidden_size": 16,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "intermediate_size": 32,
            "vocab_size": 128,
        }
        image, image_token = 28, 100
    else:
        vision = {
            "hidden_size": 3200,
            "num_hidden_layers": 45,
            "num_attention_heads": 25,
            "intermediate_size": 12800,
        }
        text = {
            "hidden_size": 6144,
            "num_hidden_layers": 48,
            "num_attention_heads": 48,
            "num_key_value_heads": 8,
            "intermediate_size": 16384,
            "vocab_size": 92553,
        }
        image, image_token = 448, INTERNVL_IMAGE_TOKEN
    patch = 14
    return InternVLConfig(
        vision_config=InternVLVisionConfig(
            **vision,
            use_qk_norm=True,
            norm_type="rms_norm",
            image_size=image,
            patch_size=patch,
            use_mean_pooling=False,
        ),
        text_config=LlamaConfig(**text, max_position_embeddings=32768, rope_theta=1e6),
        image_token_id=image_token,
        image_seq_length=(image // patch // 2) ** 2,  # pixel shuffle 0.5: 256 tokens a tile
        downsample_ratio=0.5,
    )
