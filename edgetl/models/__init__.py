"""Backbones: the registry (no TensorFlow at import), builders and pretrained weights."""

from edgetl.models.registry import BackboneSpec, build, get_spec, list_specs, names, register

__all__ = ["BackboneSpec", "build", "get_spec", "list_specs", "names", "register"]
