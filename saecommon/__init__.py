"""Framework-neutral pieces shared by jaxsae and torchsae: the config schema and the
portable checkpoint format (numpy + safetensors). Neither model package imports the
other; both import this."""

from saecommon.checkpoint import (
    CheckpointError,
    expected_shapes,
    read_checkpoint,
    write_checkpoint,
)
from saecommon.config import ConfigError, SAEConfig, resolve_lifetime_k

__all__ = [
    "CheckpointError",
    "ConfigError",
    "SAEConfig",
    "expected_shapes",
    "read_checkpoint",
    "resolve_lifetime_k",
    "write_checkpoint",
]
