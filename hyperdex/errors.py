"""Errors hyperdex raises. Every message says what is wrong and what to do about it."""

from __future__ import annotations


class HyperdexError(Exception):
    """Base class of every error hyperdex raises on purpose."""


class ConfigError(HyperdexError, ValueError):
    """A config (HF config.json, a preset, compile options) is invalid or inconsistent."""


class UnsupportedArchitectureError(ConfigError):
    """The checkpoint's architecture is not in the registry (a config value hyperdex cannot
    honour, so a ConfigError too)."""


class CheckpointError(HyperdexError):
    """A Hugging Face checkpoint is missing, truncated, corrupt or disagrees with its config."""


class FormatError(HyperdexError):
    """A hyperdex artifact (converted model, parameters, programs) is corrupt, stale or of
    another format version."""


class CapacityError(HyperdexError):
    """The model does not fit the chosen devices."""


class DeviceError(HyperdexError, RuntimeError):
    """A device backend failed or is not available."""
