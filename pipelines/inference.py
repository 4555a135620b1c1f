"""Inference with registered concepts: any MLflow model URI of a concept -> a Persona.

    persona, names = load_persona(tracking_uri, ["models:/omnipersona.acme.maeve@champion"], base_uri)
    run_request(persona, "understand", "Is <Maeve> in this image?", image=photo)

Accepted URIs: `models:/<name>@<alias>`, `models:/<name>/<version>` and `models:/m-<logged model id>`.
Every URI is parsed, then looked up in the registry, before anything downloads. `omnipersona infer`
and the served concept model (`pipelines/register/serving.py`) answer requests with `run_request`.
"""
from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from omnipersona.concepts.artifact import ConceptArtifact
from omnipersona.identity import ModelUri, parse_any_model_uri
from omnipersona.infer.engine import Persona
from omnipersona.model.sampling import FlowSampling
from pipelines.model_store import load_base, resolve_model_uri
from pipelines.storage import StorageConfig

DEFAULT_TINY_CACHE = "~/.cache/omnipersona/tiny-bagel"
TASKS = ("understand", "generate", "edit")
STORAGE_ENV_PREFIX = "OMNIPERSONA_STORAGE__"  # as in the job config: OMNIPERSONA_STORAGE__ENDPOINT_OVERRIDE=...

# `<name>` in a prompt: a concept, by its display name. No space just inside the brackets, so
# "a < b > c" is text.
CONCEPT_IN_PROMPT = re.compile(r"<(?!\s)([^<>\n]{1,128}?)(?<!\s)>")


def check_prompt_concepts(prompt: str, loaded: list[str]) -> None:
    """`ValueError` when the prompt names a concept (`<name>`) that is not loaded: it would reach the
    model as plain text, and the answer would silently ignore the concept."""
    unknown = sorted({name for name in CONCEPT_IN_PROMPT.findall(prompt) if name not in loaded})
    if unknown:
        named = ", ".join(f"<{name}>" for name in unknown)
        available = ", ".join(f"<{name}>" for name in loaded)
        raise ValueError(f"the prompt names {named}, which is not loaded; loaded concepts: {available}")


def run_request(persona: Persona, task: str, prompt: str, image=None, concept: str | None = None,
                replay: bool = True) -> dict:
    """One request: `understand` -> answer, yes_probability; `generate` / `edit` -> image (PIL),
    replay (the knowledge replay trace or None). Both give prompt_used."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}: use one of {', '.join(TASKS)}")
    check_prompt_concepts(prompt, persona.names)
    if task == "understand":
        answer = persona.understand(prompt, image=image)
        return {"answer": answer.text, "yes_probability": answer.yes_probability, "prompt_used": prompt}
    concept = concept or persona.names[0]
    if concept not in persona.names:
        raise ValueError(f"concept {concept!r} is not loaded; loaded concepts: {', '.join(persona.names)}")
    if task == "generate":
        out = persona.generate(concept, prompt, replay=replay)
    else:
        if image is None:
            raise ValueError("edit needs the picture to edit")
        out = persona.edit(concept, image, prompt, replay=replay)
    return {"image": out.image, "prompt_used": out.prompt_used, "replay": out.replay}


def storage_from_env(environ=None) -> StorageConfig:
    """Object storage settings from `OMNIPERSONA_STORAGE__<FIELD>` variables (what a process that has
    no job config, such as a model server, uses to read an s3:// base)."""
    environ = os.environ if environ is None else environ
    fields = {k[len(STORAGE_ENV_PREFIX):].lower(): v for k, v in environ.items() if k.startswith(STORAGE_ENV_PREFIX)}
    return StorageConfig(**fields)


def persona_for(base_uri: str, artifacts: list[ConceptArtifact], image_size: int = 64, sampling_steps: int = 50,
                tiny_cache: str = DEFAULT_TINY_CACHE, storage: StorageConfig | None = None) -> Persona:
    """The concepts loaded together on the base at `base_uri` (loaded once per process; a concept
    trained on another base is refused, naming both)."""
    bundle = load_base(resolve_model_uri(base_uri, tiny_cache), storage or storage_from_env())
    return Persona.from_artifacts(bundle, artifacts, image_size=image_size, sampling=FlowSampling(num_steps=sampling_steps))


@dataclass(frozen=True)
class ConceptModelSource:
    """Where the package behind a model URI lives."""

    uri: str  # as given
    download_uri: str


def locate(connection, ref: ModelUri) -> ConceptModelSource:
    """Look a model URI up in the registry (no download); `LookupError` naming the URI when it does not
    exist, `ValueError` when it holds no OmniPersona concept."""
    from mlflow.exceptions import MlflowException

    from pipelines.register.names import LOGGED_MODEL_TYPE
    from pipelines.register.registry import version_model_id

    client = connection.client
    try:
        if ref.model_id is not None:
            model_id, download_uri = ref.model_id, None
        else:
            if ref.alias is not None:
                version = connection.call("resolve alias", client.get_model_version_by_alias, ref.name, ref.alias)
            else:
                version = connection.call("get version", client.get_model_version, ref.name, str(ref.version))
            model_id = version_model_id(version)
            download_uri = connection.call("download uri", client.get_model_version_download_uri, ref.name, version.version)
        logged = connection.call("get logged model", client.get_logged_model, model_id) if model_id else None
    except MlflowException as e:
        if e.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            raise LookupError(f"{ref.uri} does not exist in the registry at {connection.tracking_uri}: {e.message}") from e
        raise
    if logged is not None and logged.model_type != LOGGED_MODEL_TYPE:
        raise ValueError(f"{ref.uri} is not an OmniPersona concept model (model type {logged.model_type!r})")
    return ConceptModelSource(ref.uri, download_uri or logged.artifact_location)


def load_persona(tracking_uri: str, model_uris: list[str], base_uri: str | None = None,
                 tiny_cache: str = DEFAULT_TINY_CACHE, image_size: int = 64, sampling_steps: int = 50,
                 storage: StorageConfig | None = None) -> tuple[Persona, list[str]]:
    """Download the concepts behind `model_uris` and load them together on the base: `base_uri`, or
    the base the concept models recorded when they were logged. Returns the Persona and the
    concepts' display names (how prompts name them, `<name>`)."""
    import mlflow.artifacts

    from pipelines.register import MlflowConnection
    from pipelines.register.concept_model import concept_folder, recorded_config

    refs = [parse_any_model_uri(uri) for uri in model_uris]  # every URI checked before anything downloads
    connection = MlflowConnection(tracking_uri)
    sources = [locate(connection, ref) for ref in refs]  # ... and found in the registry
    artifacts, recorded = [], set()
    with tempfile.TemporaryDirectory(prefix="omnipersona-infer-") as tmp:
        for i, source in enumerate(sources):
            local = connection.call("download", mlflow.artifacts.download_artifacts, artifact_uri=source.download_uri,
                                    dst_path=str(Path(tmp) / str(i)), tracking_uri=tracking_uri)
            artifacts.append(ConceptArtifact.load(concept_folder(local)))
            recorded.add(recorded_config(local).get("base_model_uri") or "")
    if base_uri is None:
        if len(recorded) != 1 or not next(iter(recorded)):
            raise ValueError(f"no base model given and the concept models recorded {sorted(recorded)}: "
                             "pass --base (or a job config whose model.uri is the base)")
        base_uri = recorded.pop()
    persona = persona_for(base_uri, artifacts, image_size=image_size, sampling_steps=sampling_steps,
                          tiny_cache=tiny_cache, storage=storage)
    return persona, [a.manifest.display_name for a in artifacts]
