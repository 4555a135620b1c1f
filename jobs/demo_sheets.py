"""The demo's before/after view of each concept: a contact sheet and the numbers under it.

For a concept the job registered, BEFORE is the bank the job's trainer started it from (the same
`init_pack_concepts` over the same training pool, recipe and seed), AFTER its champion from the
registry. Both are asked the same things (`omnipersona.infer.contact_sheet`) on the concept's
held-out set (other views, look-alikes, a private fact, a PARG request, an edit); the sheet goes to
`<demo>/outputs/<tenant>_<concept>.png` and, as an artifact, to the concept's registration run and
logged model (`contact_sheet/`).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from omnipersona.concepts.bank import ConceptBank
from omnipersona.evaluation.eval_set import EvalOptions
from omnipersona.identity import ConceptId
from omnipersona.infer.contact_sheet import SheetProbe, SheetRow, compose_sheet, run_row
from omnipersona.infer.engine import Persona
from omnipersona.model.sampling import FlowSampling
from omnipersona.training import init_pack_concepts
from omnipersona.world.eval_sets import eval_set_from_manifest
from omnipersona.world.uploads import read_concept_upload
from pipelines.config import JobConfig
from pipelines.ingest.holdout import gate_epochs
from pipelines.paths import JobPaths
from pipelines.storage import filesystem_for
from pipelines.train.example_store import read_pools

log = logging.getLogger("omnipersona.demo")
SAMPLING_STEPS = 20  # the sheets' pictures: more than the gate's quick samples, still a second on 2 cores
SHEET_ARTIFACTS = "contact_sheet"
BEATS_BY = 0.02


@dataclass
class ConceptSheet:
    key: str
    path: Path
    before: SheetRow
    after: SheetRow

    @property
    def trained_beats_untrained(self) -> bool:
        """Held-out recognition: the champion's mean p(yes) on the held-out pictures above the untrained
        tokens' by more than `BEATS_BY` (a rounding-size difference is no win)."""
        return self.after.held_out_mean - self.before.held_out_mean > BEATS_BY


def untrained_persona(cfg: JobConfig, job_id: str, concept: ConceptId, class_word: str, bundle, name: str,
                      sampling: FlowSampling) -> Persona:
    """The concept's tokens as the job's training started them: its training pool from the job's
    examples, `init_pack_concepts` with the job's recipe (seeded by the concept's key)."""
    recipe, llm = cfg.train.recipe, bundle.config.llm
    fs, path = filesystem_for(JobPaths.of(cfg, job_id).examples, cfg.storage)
    pools = read_pools(fs, path, [concept.key], exclude_epochs=gate_epochs(cfg.ingest))  # as the job's training
    bank = ConceptBank(1, llm.hidden_size, llm.vocab_size, recipe.num_und_tokens, recipe.num_gen_tokens, mode=recipe.mode)
    init_pack_concepts(bank, bundle, pools, [class_word], recipe)
    return Persona(bundle, bank.to(bundle.model.llm2vae.weight), [name], image_size=cfg.ingest.vit_size, sampling=sampling)


def concept_sheet(cfg: JobConfig, job_id: str, root: Path, concept_key: str, eval_views: int) -> ConceptSheet:
    """Both rows of one registered concept, the sheet written under `<root>/outputs` and logged to MLflow."""
    from mlflow import MlflowClient

    from pipelines.inference import load_persona

    concept = ConceptId.parse(concept_key)
    size = cfg.ingest.vit_size
    sampling = FlowSampling(num_steps=SAMPLING_STEPS)
    model_name = concept.model_name(cfg.mlflow.registry_prefix)
    after_persona, names = load_persona(cfg.mlflow.tracking_uri, [concept.model_uri(cfg.mlflow.registry_prefix, alias="champion")],
                                        cfg.model.uri, cfg.model.tiny_cache, image_size=size, sampling_steps=SAMPLING_STEPS)
    upload = root / "uploads" / concept.tenant / concept.concept
    class_word = read_concept_upload(upload).class_word
    before_persona = untrained_persona(cfg, job_id, concept, class_word, after_persona.bundle, names[0], sampling)
    eval_set = eval_set_from_manifest(str(Path(cfg.evaluation.eval_sets_uri) / concept.tenant / concept.concept),
                                      options=EvalOptions(views=eval_views, hard_negatives=eval_views, random_negatives=0,
                                                          vqa_per_view=0, generations=0, edits=3, image_size=size))
    probe = SheetProbe.from_eval_set(eval_set)
    rows = [run_row(label, persona, probe) for label, persona in (("BEFORE", before_persona), ("AFTER", after_persona))]
    uploads = [Image.open(p).convert("RGB") for p in sorted((upload / "images").glob("*.png"))]
    out = root / "outputs" / f"{concept.tenant}_{concept.concept}.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    title = (f"{concept.key} <{names[0]}> ({class_word}): untrained tokens (BEFORE) vs the registered champion (AFTER), "
             f"base {cfg.model.uri}")
    compose_sheet(title, uploads, rows).save(out)
    client = MlflowClient(cfg.mlflow.tracking_uri)
    version = client.get_model_version_by_alias(model_name, "champion")
    client.log_artifact(version.run_id, str(out), SHEET_ARTIFACTS)
    logged_model = version.model_id or (version.source.removeprefix("models:/") if version.source.startswith("models:/m-") else None)
    if logged_model:
        client.log_model_artifact(logged_model, str(out))
    return ConceptSheet(concept.key, out, *rows)


def summary_lines(sheets: list[ConceptSheet]) -> list[str]:
    """Per concept, held-out recognition before vs after (and on look-alikes), then how many beat untrained tokens."""
    lines = [f"{s.key}: held-out p(yes) {s.before.held_out_mean:.2f} -> {s.after.held_out_mean:.2f}, "
             f"look-alikes {s.before.look_alike_mean:.2f} -> {s.after.look_alike_mean:.2f} (untrained -> trained)   {s.path}"
             for s in sheets]
    wins = sum(s.trained_beats_untrained for s in sheets)
    lines.append(f"trained beats untrained on held-out recognition for {wins} of {len(sheets)} concepts "
                 f"(mean p(yes) up by more than {BEATS_BY})")
    return lines
