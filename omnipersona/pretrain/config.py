"""The recipe of the world base: model size, data mix and schedule, all in one hashed config.

The base is rebuilt deterministically from this config alone, so its hash names the cache folder:
change any field and a new base is built next to the old one.
"""
from __future__ import annotations

import hashlib
import json

from pydantic import BaseModel, ConfigDict, Field

from ..model.config import BagelConfig, LLMConfig, VAEConfig, ViTConfig

RECIPE_VERSION = "3"  # bump when the code changes what a config builds (stages 1-3)
CURRICULUM_VERSION = "1"  # bump when the curriculum code changes


class ModelSize(BaseModel):
    """The BAGEL architecture, scaled down (same modules, only these numbers differ)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    hidden_size: int = 128
    layers: int = 4
    heads: int = 4
    kv_heads: int = 2
    mlp_ratio: int = 2
    vocab_size: int = 768
    vit_hidden: int = 128
    vit_layers: int = 3
    vit_heads: int = 4
    vit_patch: int = 8
    image_size: int = 32
    vae_ch: int = 32
    vae_levels: int = 3  # 2**(levels-1) = spatial downsample of the VAE
    z_channels: int = 8


class Schedule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    steps: int = Field(1400, ge=1)
    batch_size: int = Field(32, ge=1)
    lr: float = 2e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    weight_decay: float = 0.01
    grad_clip: float = 1.0


class TaskMix(BaseModel):
    """Relative weights of the pretraining tasks (see `omnipersona.pretrain.tasks`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    caption: float = 0.75  # image -> caption
    t2i: float = 1.25  # caption -> image
    vqa: float = 1.0  # image + question -> answer
    attribute_check: float = 1.0  # "Is there a striped teal star in the image?" with look-alikes
    edit: float = 0.75  # source + instruction -> target
    named_recognition: float = 2.0  # "<name> is ..." + image: "Is <name> in this image?"
    named_vqa: float = 0.75
    named_text_qa: float = 0.75  # facts in context -> answer, train and other wordings
    named_t2i: float = 1.25  # facts in context + "a photo of <name> ..." -> image
    named_edit: float = 0.75
    intent: float = 0.3  # the knowledge-replay few-shot prompt -> explicit question


class Curriculum(BaseModel):
    """Stage 4: what the task mix of stage 3 leaves at chance in the CPU budget — drawing a named
    item, verifying by Yes / No, and copying a name when parsing a replay request.

    Phase 0 draws described concepts with one of their items spelled out ("a photo of maeve with a
    red rocket": PARG's picture once replay has recalled the item). Phase 1 checks one colour on
    plain backgrounds, phase 2 colour / shape / pattern anywhere (half of both: the matching "What
    colour is the object?" VQA), phase 3 mixes those with *named* single-attribute checks ("maeve is
    teal." + picture + "Is maeve in this image?"), the base's own attribute-check and
    named-recognition tasks, the whole task mix against forgetting, item drawings and replay intent
    prompts, with the learning rate annealed as stage 3 ended. Measured in docs/evaluation.md; every
    step count 0 turns the stage off (the stage-3 base, digest 249a5ea116e1)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    item_steps: int = Field(600, ge=0)
    plain_colour_steps: int = Field(200, ge=0)
    single_attribute_steps: int = Field(200, ge=0)
    named_steps: int = Field(1300, ge=0)
    batch_size: int = 32
    lr: float = 2e-3
    # Phase 3 anneals the learning rate (cosine) to lr * named_min_lr_ratio; 1.0 keeps it constant
    # (measured: constant made the base forget VQA, 0.58 -> 0.48).
    named_min_lr_ratio: float = Field(0.1, gt=0.0, le=1.0)
    # phase-3 batch: single-attribute checks, named single-attribute checks, named tasks, the whole mix
    named_batch: tuple[int, int, int, int] = (5, 7, 4, 11)
    named_item_samples: int = Field(3, ge=0)  # phase 3: item drawings per batch
    named_intent_samples: int = Field(2, ge=0)  # phase 3: replay intent prompts per batch (keeps name copying)

    @property
    def steps(self) -> int:
        return self.item_steps + self.plain_colour_steps + self.single_attribute_steps + self.named_steps


class PretrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    seed: int = 0
    model: ModelSize = ModelSize()
    vae_crop_steps: int = Field(800, ge=0)  # first on 16-pixel crops (4x cheaper), then whole images
    vae_steps: int = Field(150, ge=0)
    vae_batch_size: int = 16
    vae_lr: float = 3e-3
    schedule: Schedule = Schedule()
    mix: TaskMix = TaskMix()
    mse_weight: float = 1.0
    cfg_dropout: float = 0.1  # drop the generation condition this often (classifier-free guidance)
    target_repeats: int = Field(2, ge=1)  # noised copies of each generation target (cheap extra flow terms)
    vit_steps: int = Field(1000, ge=0)  # stage 1b: vision encoder on attribute labels (SigLIP stand-in)
    vit_batch_size: int = 64
    vit_lr: float = 3e-3
    # Stage 2 at lr 2e-3 wrecked what stage 1b taught the ViT (linear-probe colour accuracy 0.98 -> 0.43,
    # measured), so by default the ViT stays as stage 1b left it, the way a pretrained SigLIP is kept.
    base_trains_vit: bool = False
    curriculum: Curriculum = Curriculum()
    threads: int = 1  # intra-op threads: more than 1 on shared, busy cores makes OpenMP spin (10-50x slower)

    def digest(self) -> str:
        if not self.curriculum.steps:  # no stage 4: the same base (and name) as before it existed
            return self.base_stage_digest()
        payload = {"recipe": RECIPE_VERSION, "curriculum_version": CURRICULUM_VERSION,
                   **self.model_dump(mode="json", exclude={"threads"})}
        for option, off in (("named_min_lr_ratio", 1.0), ("item_steps", 0), ("named_item_samples", 0), ("named_intent_samples", 0)):
            if payload["curriculum"][option] == off:  # bases measured before the option existed keep their names
                del payload["curriculum"][option]
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]

    def base_stage_digest(self) -> str:
        """What stages 1-3 depend on (everything but the curriculum): their cached result's key."""
        payload = {"recipe": RECIPE_VERSION, **self.model_dump(mode="json", exclude={"threads", "curriculum"})}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


def bagel_config(size: ModelSize) -> BagelConfig:
    """The BagelConfig of a world base (a BAGEL-7B-MoT config with small numbers)."""
    latent_side = size.image_size // (2 ** (size.vae_levels - 1)) // 2
    return BagelConfig(
        llm=LLMConfig(
            vocab_size=size.vocab_size,
            hidden_size=size.hidden_size,
            intermediate_size=size.hidden_size * size.mlp_ratio,
            num_hidden_layers=size.layers,
            num_attention_heads=size.heads,
            num_key_value_heads=size.kv_heads,
            max_position_embeddings=4096,
            rope_theta=10000.0,
        ),
        vit=ViTConfig(
            hidden_size=size.vit_hidden,
            intermediate_size=size.vit_hidden * 2,
            num_hidden_layers=size.vit_layers + 1,  # the release counts the dropped last layer
            num_attention_heads=size.vit_heads,
            image_size=size.image_size,
            patch_size=size.vit_patch,
        ),
        vae=VAEConfig(
            resolution=size.image_size,
            ch=size.vae_ch,
            ch_mult=[1] * size.vae_levels,
            num_res_blocks=1,
            z_channels=size.z_channels,
        ),
        max_latent_size=max(4, latent_side),
        vit_max_num_patch_per_side=size.image_size // size.vit_patch,
        model_id="omnipersona/world-base",
    )
