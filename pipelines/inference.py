"""Inference with registered concepts: `models:/<prefix>.<tenant>.<concept>@<alias>` -> a Persona."""
from __future__ import annotations

import re
import tempfile

from omnipersona.concepts.artifact import ConceptArtifact
from omnipersona.infer.engine import Persona
from omnipersona.model.sampling import FlowSampling
from pipelines.model_store import load_base, resolve_model_uri
from pipelines.register import ConceptRegistry

_MODEL_URI = re.compile(r"^models:/(?P<prefix>[a-z0-9][a-z0-9_-]*)\.(?P<tenant>[a-z0-9][a-z0-9_-]*)\.(?P<concept>[a-z0-9][a-z0-9_-]*)@(?P<alias>[A-Za-z0-9_-]+)$")


def parse_model_uri(uri: str) -> tuple[str, str, str, str]:
    m = _MODEL_URI.match(uri)
    if not m:
        raise ValueError(f"{uri!r} is not a concept model URI; expected models:/<prefix>.<tenant>.<concept>@<alias>, e.g. models:/omnipersona.acme.maeve@champion")
    return m["prefix"], m["tenant"], m["concept"], m["alias"]


def load_persona(tracking_uri: str, model_uris: list[str], base_uri: str, tiny_cache: str = "~/.cache/omnipersona/tiny-bagel",
                 image_size: int = 64, sampling_steps: int = 50, storage=None) -> tuple[Persona, list[str]]:
    """Download the concepts behind `model_uris`, check them against the base, and load them together."""
    bundle = load_base(resolve_model_uri(base_uri, tiny_cache), storage)
    artifacts = []
    for uri in model_uris:
        prefix, tenant, concept, alias = parse_model_uri(uri)
        registry = ConceptRegistry(tracking_uri, prefix=prefix)
        with tempfile.TemporaryDirectory(prefix="omnipersona-infer-") as tmp:
            folder = registry.download(tenant, concept, tmp, alias=alias)
            artifacts.append(ConceptArtifact.load(folder, expected_fingerprint=bundle.fingerprint))
    persona = Persona.from_artifacts(bundle, artifacts, image_size=image_size, sampling=FlowSampling(num_steps=sampling_steps))
    return persona, [a.manifest.display_name for a in artifacts]
