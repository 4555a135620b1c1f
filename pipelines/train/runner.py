"""The DeepSpeed side of training packs on a Ray worker: ZeRO gathers, fp32 masters, artifacts.

The step loop itself is the library's `omnipersona.training.PackTrainer`, here over DeepSpeed's
engine. One engine lives for the whole job: the frozen backbone is loaded once per worker, and
between packs only the bank's values, the AdamW state and the LR schedule are reset. Work is spread
data-parallel *inside* a pack: at each step every worker takes its share of every concept's examples
(example i of a concept goes to rank i mod W), normalises each concept's loss by the concept's
target counts over the whole step, DeepSpeed averages the gradients (the trainer scales the loss by
W to undo the average), and ZeRO partitions the bank's optimizer state (ZeRO-3 also the frozen
backbone) across workers. So a step's compute splits W ways while every optimizer step still
touches every concept of the pack, and the tokens do not depend on W: a concept's data and
randomness depend only on (concept, step, index), its gradient only on its own examples.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
from dataclasses import dataclass, field

import torch

from omnipersona.concepts.artifact import TENSOR_NAMES, ConceptArtifact, ConceptManifest, artifact_subpath
from omnipersona.concepts.bank import ConceptBank
from omnipersona.concepts.samples import SampleBuilder
from omnipersona.identity import ConceptId
from omnipersona.training import ConceptPool, PackTrainer, StepRecord, TrainConfig, init_pack_concepts

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConcept:
    """A concept the train stage trains: who it is, how it is named, and what identifies the result —
    the data it trains on, the recipe (its hash) and the base weights (their fingerprint)."""

    id: ConceptId
    display_name: str
    class_word: str
    data_digest: str
    recipe_hash: str
    base_fingerprint: str
    # `train.warm_start`: the artifact (subpath below the artifact root) of the concept's newest
    # registered version, whose tokens this training starts from instead of a fresh initialisation.
    warm_start: str | None = None

    @property
    def subpath(self) -> str:
        """Where its artifact lives below the artifact root."""
        return artifact_subpath(self.id, self.data_digest, self.recipe_hash, self.base_fingerprint)


@dataclass
class Telemetry:
    """A concept's training record for its manifest; carried in checkpoints (`to_dict`/`from_dict`), so
    a concept resumed mid-pack reports the whole recipe's steps and its first-batch loss before."""

    steps: int = 0
    samples: int = 0
    seconds: float = 0.0
    curve: dict[str, list[float]] = field(default_factory=dict)
    # Loss on the pack's first batch before training and after it: same data, a clean "did it learn".
    first_batch_before: float | None = None
    first_batch_after: float | None = None
    # Per step, columns of equal length: `step` (steps of the pack done, 1-based), `loss` (the sum of
    # the concept's loss terms, as the first-batch losses) and one column per term (None: not in that
    # step). What the concept's MLflow run shows as training curves.
    history: dict[str, list] = field(default_factory=dict)

    def add(self, record: StepRecord, slot: int) -> None:
        """Count one step of the pack for the concept in `slot`."""
        self.steps += 1
        self.samples += record.samples[slot]
        self.seconds += record.seconds  # the pack's concepts train concurrently: each takes the whole step
        terms = {}
        for task, values in record.task_losses.items():
            value = values[slot]
            if value == value:  # not NaN: the step had that task for the concept
                self.curve.setdefault(task, []).append(value)
                terms[task] = float(value)
        rows = len(self.history.get("step", []))
        self.history.setdefault("step", []).append(record.step + 1)
        self.history.setdefault("loss", []).append(sum(terms.values()) if terms else None)
        for task in set(terms) | {k for k in self.history if k not in ("step", "loss")}:
            self.history.setdefault(task, [None] * rows).append(terms.get(task))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Telemetry":
        return cls(**data)


class PackRunner:
    """A worker's `PackTrainer` over a DeepSpeed engine, plus what only DeepSpeed needs: gathering
    ZeRO-3 shards and writing ZeRO's fp32 master copy when the bank is reset."""

    def __init__(self, bundle, engine, bank: ConceptBank, recipe: TrainConfig, rank: int, world: int, zero_stage: int):
        self.bundle, self.bank, self.recipe, self.zero_stage = bundle, bank, recipe, zero_stage
        self.builder = SampleBuilder(bundle, bank, recipe.vit_size, recipe.vae_size)
        # Step records and first-batch losses summed over the ranks: the manifests do not depend on W.
        self.trainer = PackTrainer(engine, self.builder, recipe, rank, world, reduce=_all_reduce_sum)

    @torch.no_grad()
    def reset_concepts(self, concepts: list[TrainConcept], pools: list[ConceptPool],
                       warm_tokens: dict[int, dict[str, torch.Tensor]] | None = None) -> None:
        """Fresh concept values (seeded per concept) for a new pack, or for the slots in
        `warm_tokens` the tokens of an earlier version (warm start); `trainer.start_pack` resets the
        optimizer state and the schedule."""
        fresh = ConceptBank(self.bank.num_concepts, self.bank.hidden_size, self.bank.vocab_size,
                            self.recipe.num_und_tokens, self.recipe.num_gen_tokens, mode=self.recipe.mode)
        lm = self.bundle.model.language_model
        # Initialisation reads vocabulary rows directly: under ZeRO-3 they must be gathered first.
        gathered = contextlib.nullcontext()
        if self.zero_stage == 3:
            import deepspeed

            gathered = deepspeed.zero.GatheredParameters([lm.model.embed_tokens.weight, lm.lm_head.weight])
        with gathered:
            init_pack_concepts(fresh, self.bundle, pools, [c.class_word for c in concepts], self.recipe, cache=self.builder.cache)
        for slot, tensors in (warm_tokens or {}).items():
            fresh.load_concept(slot, tensors)
        self._write(fresh)

    @torch.no_grad()
    def load_concepts(self, tensors: dict[int, dict[str, torch.Tensor]]) -> None:
        """Put `tensors` (slot -> a concept's tensors) into the bank, the other slots unchanged: early
        stopping's best-check tokens at the end of a pack. Every rank calls this (collectives under ZeRO-3)."""
        if not tensors:
            return
        current = ConceptBank(self.bank.num_concepts, self.bank.hidden_size, self.bank.vocab_size,
                              self.recipe.num_und_tokens, self.recipe.num_gen_tokens, mode=self.recipe.mode)
        for name, param in self.bank.named_parameters():
            with self._whole(param):
                getattr(current, name).data.copy_(param.data.detach().float().cpu())
        for slot, values in tensors.items():
            current.load_concept(slot, values)
        self._write(current)

    def _write(self, source: ConceptBank) -> None:
        """The bank's values (and ZeRO's fp32 master copies) from `source`, a CPU bank of the same shape."""
        for name, param in self.bank.named_parameters():
            value = getattr(source, name).to(device=param.device, dtype=param.dtype)
            with self._whole(param, modify=True):
                param.data.copy_(value)
            if self.zero_stage > 0:
                _set_fp32_master(param, value.float(), self.zero_stage)

    def _whole(self, param, modify: bool = False):
        """Under ZeRO-3 a parameter is a shard outside forward: gather it (a collective)."""
        if self.zero_stage < 3:
            return contextlib.nullcontext()
        import deepspeed

        return deepspeed.zero.GatheredParameters([param], modifier_rank=0 if modify else None)

    def concept_tensors(self, slots: list[int]) -> list[dict[str, torch.Tensor]]:
        """Trained tensors of `slots`; every rank must call this (a collective under ZeRO-3)."""
        with contextlib.ExitStack() as stack:
            for p in self.bank.parameters():
                stack.enter_context(self._whole(p))
            return [self.bank.concept_tensors(s) for s in slots]


def _set_fp32_master(param: torch.nn.Parameter, value: torch.Tensor, zero_stage: int) -> None:
    """Write `value` (the whole parameter) into ZeRO's fp32 master copy of it on this rank.

    Under ZeRO-3 this rank's slice is cut here, as ZeRO-3 partitions: the flat value zero-padded to
    W equal parts. DeepSpeed's `safe_set_full_fp32_param` cuts without the padding and fails on the
    last rank when W does not divide the size (e.g. 128 elements over 3 workers)."""
    from deepspeed.utils import safe_set_full_fp32_param, safe_set_local_fp32_param

    if zero_stage < 3:
        safe_set_full_fp32_param(param, value)
        return
    part, group = param.ds_tensor.numel(), param.ds_process_group
    rank, world = torch.distributed.get_rank(group=group), torch.distributed.get_world_size(group=group)
    flat = value.flatten()
    padded = torch.nn.functional.pad(flat, (0, part * world - flat.numel()))
    safe_set_local_fp32_param(param, padded.narrow(0, part * rank, part).to(param.ds_tensor.device))


def _all_reduce_sum(tensor: torch.Tensor) -> None:
    torch.distributed.all_reduce(tensor)


def zero3_partitioning(module: torch.nn.Module) -> dict:
    """How ZeRO-3 holds `module`'s parameters on this rank now (outside forward): how many are
    released to this rank's partition (`ds_status` NOT_AVAILABLE, data of shape (0,)), how many stay
    whole (persistent: below `stage3_param_persistence_threshold`), and the largest parameter's full
    size next to the size of this rank's partition of it."""
    from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus

    params = [(name, p) for name, p in module.named_parameters() if hasattr(p, "ds_numel")]
    name, largest = max(params, key=lambda item: item[1].ds_numel)
    return {
        "params": len(params),
        "released": sum(p.ds_status == ZeroParamStatus.NOT_AVAILABLE for _, p in params),
        "persistent": sum(bool(getattr(p, "ds_persist", False)) for _, p in params),
        "largest": {"name": name, "numel": int(largest.ds_numel), "partition_numel": int(largest.ds_tensor.numel()),
                    "data_numel": int(largest.data.numel())},
    }


def fill_partitioned_param(param: torch.nn.Parameter, value: torch.Tensor) -> None:
    """Fill a parameter built under `deepspeed.zero.Init` (`load_bagel`'s `fill_param` under ZeRO-3):
    gather it whole, copy, and DeepSpeed re-partitions it on exit (a collective: every rank calls).
    Every rank read the same file; rank 0's copy is the one DeepSpeed keeps."""
    import deepspeed

    with deepspeed.zero.GatheredParameters([param], modifier_rank=0):
        param.data.copy_(value.to(param.dtype))


def _artifact_path(artifact_root: str, concept: TrainConcept) -> str:
    return f"{artifact_root.rstrip('/')}/{concept.subpath}"


def export_artifact(fs, artifact_root: str, concept: TrainConcept, tensors: dict, recipe_hash: str, base_model_id: str,
                    base_fingerprint: str, telemetry: Telemetry, mode: str, early_stop: dict | None = None) -> str:
    """Write `<root>/<concept.subpath>/` (temp keys then final keys, manifest last).

    `early_stop` (`train.early_stopping` on): the concept's record (`ConceptStop.summary` and its
    number of held-out examples) for the manifest."""
    if (recipe_hash, base_fingerprint) != (concept.recipe_hash, concept.base_fingerprint):
        raise ValueError(f"{concept.id.key} was planned for recipe {concept.recipe_hash} on base {concept.base_fingerprint}, "
                         f"but trained with recipe {recipe_hash} on base {base_fingerprint}")
    final = {k: (sum(v[-5:]) / len(v[-5:])) for k, v in telemetry.curve.items() if v}
    manifest = ConceptManifest(
        tenant=concept.id.tenant,
        concept=concept.id.concept,
        display_name=concept.display_name,
        class_word=concept.class_word,
        training_config_hash=recipe_hash,
        data_digest=concept.data_digest,
        base_model_id=base_model_id,
        base_fingerprint=base_fingerprint,
        metrics={
            **{f"final_loss_{k}": float(v) for k, v in final.items()},
            **({"first_batch_loss_before": telemetry.first_batch_before} if telemetry.first_batch_before is not None else {}),
            **({"first_batch_loss_after": telemetry.first_batch_after} if telemetry.first_batch_after is not None else {}),
            **({"early_stop_best_heldout_loss": early_stop["best_heldout_loss"]}
               if early_stop and early_stop.get("best_heldout_loss") is not None else {}),
        },
        extra={
            "telemetry": {"steps": telemetry.steps, "samples": telemetry.samples, "wall_seconds": round(telemetry.seconds, 3)},
            "loss_curve": {k: [round(x, 5) for x in v] for k, v in telemetry.curve.items()},
            "loss_history": {k: [v if v is None or k == "step" else round(v, 6) for v in column]
                             for k, column in telemetry.history.items()},
            **({"warm_start_from": concept.warm_start} if concept.warm_start else {}),
            **({"early_stopping": early_stop} if early_stop is not None else {}),
        },
    )
    art = ConceptArtifact(**tensors, manifest=manifest, mode=mode)
    return art.save(_artifact_path(artifact_root, concept), filesystem=fs)


def tensors_checksum(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 of a concept's tensors (fp32 bytes, in artifact order): what an export log entry names."""
    digest = hashlib.sha256()
    for name in TENSOR_NAMES:
        digest.update(name.encode())
        digest.update(tensors[name].detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def warm_start_tokens(fs, artifact_root: str, concepts: list[TrainConcept], bank) -> dict[int, dict[str, torch.Tensor]]:
    """Slot -> the tokens of the artifact each warm-started concept starts from. An artifact whose
    token counts or mode differ from this bank's is not used (that concept starts fresh; logged)."""
    from omnipersona.concepts.artifact import TENSOR_NAMES, ArtifactError, ConceptArtifact

    tokens = {}
    for slot, concept in enumerate(concepts):
        if not concept.warm_start:
            continue
        try:
            artifact = ConceptArtifact.load(f"{artifact_root.rstrip('/')}/{concept.warm_start}", filesystem=fs)
        except ArtifactError as e:  # deleted or unreadable since it was registered
            log.warning("%s: cannot warm start from %s (%s); starting fresh", concept.id.key, concept.warm_start, e)
            continue
        fits = (artifact.hidden_size, artifact.num_und_tokens, artifact.num_gen_tokens, artifact.mode) == (
            bank.hidden_size, bank.num_und, bank.num_gen, bank.mode)
        if not fits:
            log.warning("%s: the tokens of %s do not fit this recipe's bank; starting fresh", concept.id.key, concept.warm_start)
            continue
        tokens[slot] = {name: getattr(artifact, name) for name in TENSOR_NAMES}
    return tokens


def artifact_exists(fs, artifact_root: str, concept: TrainConcept) -> bool:
    import pyarrow.fs as pafs

    return fs.get_file_info(f"{_artifact_path(artifact_root, concept)}/manifest.json").type == pafs.FileType.File
