"""Inference with registered concepts: `models:/<prefix>.<tenant>.<concept>@<alias>` -> a Persona."""
from __future__ import annotations

import tempfile

from omnipersona.concepts.artifact import ConceptArtifact
from omnipersona.identity import parse_model_uri
from omnipersona.infer.engine import Persona
from omnipersona.model.sampling import FlowSampling
from pipelines.model_store import load_base, resolve_model_uri
from pipelines.register import ConceptRegistry, MlflowConnection


def load_persona(tracking_uri: str, model_uris: list[str], base_uri: str, tiny_cache: str = "~/.cache/omnipersona/tiny-bagel",
                 image_size: int = 64, sampling_steps: int = 50, storage=None) -> tuple[Persona, list[str]]:
    """Download the concepts behind `model_uris`, check them against the base, and load them together."""
    refs = [parse_model_uri(uri) for uri in model_uris]  # every URI checked before anything downloads
    bundle = load_base(resolve_model_uri(base_uri, tiny_cache), storage)
    connection = MlflowConnection(tracking_uri)
    artifacts = []
    for ref in refs:
        registry = ConceptRegistry(connection, prefix=ref.prefix)
        with tempfile.TemporaryDirectory(prefix="omnipersona-infer-") as tmp:
            folder = registry.download(ref.concept, tmp, alias=ref.alias, version=ref.version)
            artifacts.append(ConceptArtifact.load(folder, expected_fingerprint=bundle.fingerprint))
    persona = Persona.from_artifacts(bundle, artifacts, image_size=image_size, sampling=FlowSampling(num_steps=sampling_steps))
    return persona, [a.manifest.display_name for a in artifacts]
