"""A procedurally generated world for measuring personalization without real photos or weights.

Objects with controllable visible attributes (shape, colour, pattern, accessory, background,
pose), personal concepts with private facts, look-alike negatives, edit triplets with exact
targets, a pretraining stream and an upload writer. numpy + PIL only; deterministic from seeds.
See docs/world.md.
"""
from omnipersona.world.attributes import (
    ACCESSORIES,
    BACKGROUNDS,
    BODY_COLOURS,
    PATTERNS,
    SHAPES,
    VISIBLE_ATTRIBUTES,
    ObjectSpec,
    Pose,
    attribute_facts,
    caption,
    differing_attributes,
    random_spec,
    visible_attributes,
)
from omnipersona.world.concepts import (
    ConceptQuestion,
    Negative,
    PargRequest,
    View,
    WorldConcept,
    make_concept,
    make_concepts,
    random_objects_unlike,
)
from omnipersona.world.edits import EDIT_KINDS, EditTriplet, make_edit
from omnipersona.world.items import Item, PrivateFacts
from omnipersona.world.render import render, render_background
from omnipersona.world.stream import CaptionSample, StreamMix, VQASample, pretraining_sample, pretraining_stream

__all__ = [
    "ACCESSORIES", "BACKGROUNDS", "BODY_COLOURS", "EDIT_KINDS", "PATTERNS", "SHAPES", "VISIBLE_ATTRIBUTES",
    "CaptionSample", "ConceptQuestion", "EditTriplet", "Item", "Negative", "ObjectSpec", "PargRequest", "Pose",
    "PrivateFacts", "StreamMix", "VQASample", "View", "WorldConcept",
    "attribute_facts", "caption", "differing_attributes", "make_concept", "make_concepts", "make_edit",
    "pretraining_sample", "pretraining_stream", "random_objects_unlike", "random_spec", "render",
    "render_background", "visible_attributes",
]
