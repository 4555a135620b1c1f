"""The served form of a registered concept: an MLflow model *defined by code* (models-from-code).

`concept_model.log_concept_model` logs this file as each concept's pyfunc model; MLflow copies it
into the package and runs it when the model is loaded (`mlflow.pyfunc.load_model("models:/...")`,
`mlflow models serve`), and `set_model` below hands MLflow the model object. Nothing is pickled:
the package holds this code, the concept artifact folder (`artifacts/concept/`), the model config
(the base model recorded at log time) and the requirements (`omnipersona==<version>`).

One request per row (a DataFrame or a list of records):

    task    understand | generate | edit
    prompt  text naming the concept as `<display name>` (a name that is not loaded is refused)
    image   optional base64 PNG: the picture to ask about (understand) or to edit (edit, required)

One answer per row: `answer` and `yes_probability` (understand), `image` (base64 PNG; generate and
edit) and `prompt_used` (the prompt after knowledge replay).

`params` override the model config: `base_model_uri` (folder, s3:// URI or 'tiny'; empty: the base
recorded at log time), `sampling_steps`, `image_size`, `replay`. The base is loaded once per process
(`pipelines.model_store.load_base` caches it), the concept's Persona once per (base, size, steps).
"""
from __future__ import annotations

import base64
import io
import math

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel

from pipelines.register.concept_model import CONCEPT_ARTIFACT_KEY, SERVING_DEFAULTS


def decode_png(text: str):
    from PIL import Image

    try:
        return Image.open(io.BytesIO(base64.b64decode(text, validate=True))).convert("RGB")
    except Exception as e:  # noqa: BLE001 - one clear message for any undecodable picture
        raise ValueError(f"image must be a base64-encoded PNG or JPEG picture: {e}") from e


def encode_png(image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _missing(value) -> bool:
    return value is None or value == "" or (isinstance(value, float) and math.isnan(value))


class ConceptServingModel(PythonModel):
    """Understand / generate / edit requests for one registered concept on its frozen base."""

    def load_context(self, context) -> None:
        from omnipersona.concepts.artifact import ConceptArtifact

        self.config = {**SERVING_DEFAULTS, **(context.model_config or {})}
        self.artifact = ConceptArtifact.load(context.artifacts[CONCEPT_ARTIFACT_KEY])
        self.personas = {}  # (base, image size, steps) -> Persona

    def _settings(self, params: dict | None) -> dict:
        settings = dict(self.config)
        for key, value in (params or {}).items():
            if key in settings and not _missing(value):
                settings[key] = value
        if not settings["base_model_uri"]:
            raise ValueError("no base model: this concept model recorded none; pass params={'base_model_uri': ...}")
        return settings

    def _persona(self, settings: dict):
        from pipelines.inference import persona_for

        key = (settings["base_model_uri"], int(settings["image_size"]), int(settings["sampling_steps"]))
        if key not in self.personas:
            self.personas[key] = persona_for(key[0], [self.artifact], image_size=key[1], sampling_steps=key[2])
        return self.personas[key]

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        from pipelines.inference import run_request

        requests = model_input.to_dict("records")
        settings = self._settings(params)
        persona = self._persona(settings)
        concept = self.artifact.manifest.display_name
        rows = []
        for request in requests:
            image = None if _missing(request.get("image")) else decode_png(request["image"])
            result = run_request(persona, str(request.get("task")), str(request.get("prompt") or ""), image,
                                 concept=concept, replay=bool(settings["replay"]))
            picture = result.get("image")
            rows.append({"answer": result.get("answer"), "yes_probability": result.get("yes_probability"),
                         "image": encode_png(picture) if picture is not None else None,
                         "prompt_used": result["prompt_used"]})
        return pd.DataFrame(rows, columns=["answer", "yes_probability", "image", "prompt_used"], dtype=object)


mlflow.models.set_model(ConceptServingModel())
