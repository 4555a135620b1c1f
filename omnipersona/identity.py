"""Who a concept is: `ConceptId` (tenant, concept), the one name rule, and the registry names built from it.

Torch-free on purpose: ingest's data workers, the registry and the CLI import it without the model.

A tenant or concept name is 1-63 characters of lowercase letters, digits, '-' and '_', starting
with a letter or digit. Lowercase, so names cannot collide on case-insensitive stores or
registries; no '/' or '.', so `<tenant>/<concept>` (storage keys) and `<prefix>.<tenant>.<concept>`
(registered model names) split back unambiguously; nothing MLflow forbids in a model name and
nothing that needs quoting inside an MLflow filter string.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

# The one name rule. Always applied with fullmatch ("$" alone would let a trailing newline through).
NAME_PATTERN = r"[a-z0-9][a-z0-9_-]{0,62}"
NAME = re.compile(NAME_PATTERN)
NAME_RULE = "1-63 characters of lowercase letters, digits, '-' and '_', starting with a letter or digit"

DEFAULT_REGISTRY_PREFIX = "omnipersona"

# models:/<prefix>.<tenant>.<concept>@<alias>  or  models:/<prefix>.<tenant>.<concept>/<version>
_MODEL_URI = re.compile(
    rf"models:/(?P<prefix>{NAME_PATTERN})\.(?P<tenant>{NAME_PATTERN})\.(?P<concept>{NAME_PATTERN})"
    r"(?:@(?P<alias>[A-Za-z0-9_-]+)|/(?P<version>[0-9]+))"
)


def name_problem(name: object, what: str) -> str | None:
    """Why `name` is not a valid tenant/concept/prefix name, or None."""
    if isinstance(name, str) and NAME.fullmatch(name):
        return None
    return f"{what} name {name!r} is not allowed: use {NAME_RULE}"


def check_name(name: object, what: str) -> str:
    """`name` if it follows the name rule, else `ValueError` saying why."""
    problem = name_problem(name, what)
    if problem:
        raise ValueError(problem)
    return name  # type: ignore[return-value]


@dataclass(frozen=True, order=True)
class ConceptId:
    """A user's concept: `ConceptId("acme", "maeve")`, key `"acme/maeve"`. Validated on creation."""

    tenant: str
    concept: str

    def __post_init__(self):
        check_name(self.tenant, "tenant")
        check_name(self.concept, "concept")

    @property
    def key(self) -> str:
        """`tenant/concept`: storage keys, Parquet partitions, summaries."""
        return f"{self.tenant}/{self.concept}"

    def __str__(self) -> str:
        return self.key

    @classmethod
    def parse(cls, key: str) -> "ConceptId":
        """`"acme/maeve"` -> `ConceptId("acme", "maeve")`; `ValueError` for anything else."""
        if not isinstance(key, str):
            raise ValueError(f"concept key {key!r} must be a string like 'tenant/concept'")
        tenant, sep, concept = key.partition("/")
        if not sep:
            raise ValueError(f"concept key {key!r} must look like 'tenant/concept'")
        return cls(tenant, concept)

    # ------------------------------------------------------------------ registry names and URIs
    def model_name(self, prefix: str = DEFAULT_REGISTRY_PREFIX) -> str:
        """The registered model: `<prefix>.<tenant>.<concept>`, e.g. `omnipersona.acme.maeve`."""
        return f"{check_name(prefix, 'registry prefix')}.{self.tenant}.{self.concept}"

    def logged_model_name(self) -> str:
        """Display name of the concept's LoggedModel (MLflow forbids '.' there); tags identify it."""
        return f"{self.tenant}__{self.concept}"

    def model_uri(self, prefix: str = DEFAULT_REGISTRY_PREFIX, *, alias: str | None = None, version: int | str | None = None) -> str:
        """`models:/<name>@<alias>` or `models:/<name>/<version>` (exactly one of the two)."""
        if (alias is None) == (version is None):
            raise ValueError("give exactly one of alias= or version=")
        suffix = f"@{alias}" if alias is not None else f"/{int(version)}"
        return f"models:/{self.model_name(prefix)}{suffix}"


@dataclass(frozen=True)
class ConceptModelRef:
    """A parsed `models:/<prefix>.<tenant>.<concept>@<alias>` (or `/<version>`) URI."""

    prefix: str
    concept: ConceptId
    alias: str | None = None
    version: int | None = None

    @property
    def uri(self) -> str:
        return self.concept.model_uri(self.prefix, alias=self.alias, version=self.version)


def parse_model_uri(uri: str) -> ConceptModelRef:
    """Parse a concept model URI; `ValueError` with an example when it is not one."""
    m = _MODEL_URI.fullmatch(uri or "")
    if not m:
        raise ValueError(
            f"{uri!r} is not a concept model URI; expected models:/<prefix>.<tenant>.<concept>@<alias> or "
            "models:/<prefix>.<tenant>.<concept>/<version>, e.g. models:/omnipersona.acme.maeve@champion"
        )
    version = int(m["version"]) if m["version"] is not None else None
    return ConceptModelRef(m["prefix"], ConceptId(m["tenant"], m["concept"]), m["alias"], version)


# Any standard MLflow model URI: a registered model version (by alias or number) or a logged model.
# MLflow registered model names hold neither '/' nor '@' here (both would make the URI ambiguous).
_REGISTERED_NAME = r"[^/@\s]+"
_ANY_MODEL_URI = re.compile(
    rf"models:/(?:(?P<model_id>m-[0-9a-f]{{32}})|(?P<name>{_REGISTERED_NAME})(?:@(?P<alias>[A-Za-z0-9_-]+)|/(?P<version>[0-9]+)))"
)


@dataclass(frozen=True)
class ModelUri:
    """A parsed standard MLflow model URI, one of
    `models:/<name>@<alias>`, `models:/<name>/<version>` (a registered model version) or
    `models:/m-<logged model id>` (a logged model)."""

    uri: str
    name: str | None = None
    alias: str | None = None
    version: int | None = None
    model_id: str | None = None


def parse_any_model_uri(uri: str) -> ModelUri:
    """Parse any standard MLflow model URI; `ValueError` listing the accepted forms when it is not one.
    (Whether it holds a concept is only known once it is resolved: see pipelines.inference.)"""
    m = _ANY_MODEL_URI.fullmatch(uri) if isinstance(uri, str) else None
    if not m:
        raise ValueError(
            f"{uri!r} is not an MLflow model URI; expected models:/<name>@<alias>, models:/<name>/<version> or "
            "models:/m-<logged model id>, e.g. models:/omnipersona.acme.maeve@champion"
        )
    version = int(m["version"]) if m["version"] is not None else None
    return ModelUri(uri, name=m["name"], alias=m["alias"], version=version, model_id=m["model_id"])


def parse_model_name(name: str) -> tuple[str, ConceptId]:
    """`omnipersona.acme.maeve` -> (`omnipersona`, `ConceptId("acme", "maeve")`)."""
    parts = name.split(".") if isinstance(name, str) else []
    if len(parts) != 3:
        raise ValueError(f"{name!r} is not a concept model name (<prefix>.<tenant>.<concept>)")
    return check_name(parts[0], "registry prefix"), ConceptId(parts[1], parts[2])
