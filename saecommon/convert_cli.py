"""Flags -> what saecommon.foreign needs, for scripts/convert.py and the evaluation
scripts: the formats, the hookpoint, and the config fields a file does not carry
(``--preset``, ``--config FILE.json``, ``--set FIELD=VALUE``)."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from saecommon.config import ConfigError, json_object
from saecommon.foreign import FORMATS


def add_source_flags(parser: argparse.ArgumentParser) -> None:
    """--from, --hookpoint, --preset, --config and --set."""
    group = parser.add_argument_group(
        "the source model (format detected from the files when --from is not given)"
    )
    group.add_argument("--from", dest="source_format", choices=FORMATS)
    group.add_argument(
        "--hookpoint", help="which SAE of a sparsify run folder (its subfolder name)"
    )
    group.add_argument(
        "--preset",
        help="a classic model's config by preset name (scripts/train.py --preset, or a "
        "reproduction entry such as ivlabs-l1), for weights that carry none",
    )
    group.add_argument(
        "--config",
        dest="config_file",
        help="a JSON file of config fields (SAEConfig's or DictConfig's)",
    )
    group.add_argument(
        "--set",
        dest="set_fields",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="one config field the file does not carry (repeatable): "
        "--set activation=topk --set k=32 --set subtract_b_dec=true; "
        "for a classic model --set topk=none says it has no top-k",
    )


def parse_value(text: str) -> Any:
    """none, true/false, an int, a float, a comma list of ints, or the text."""
    lowered = text.strip().lower()
    if lowered in ("none", "null"):
        return None
    if lowered in ("true", "false"):
        return lowered == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    if "," in text:
        try:
            return tuple(int(part) for part in text.split(",") if part.strip())
        except ValueError:
            pass
    return text


def preset_fields(name: str) -> dict[str, Any]:
    from saecommon.presets import PRESETS
    from saecommon.reproduction import ENTRIES

    runs = {**PRESETS, **{k: e.run for k, e in ENTRIES.items()}}
    if name not in runs:
        raise ConfigError(f"unknown preset {name!r}; these are: {', '.join(runs)}")
    fields = dataclasses.asdict(runs[name].model)
    fields["hidden_dims"] = tuple(fields["hidden_dims"])
    return fields


def source_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The config fields the flags give: --preset, then --config, then each --set."""
    fields: dict[str, Any] = {}
    if args.preset:
        fields.update(preset_fields(args.preset))
    if args.config_file:
        try:
            with open(args.config_file, encoding="utf-8") as f:
                data = json_object(f.read())
        except OSError as err:
            raise ConfigError(
                f"cannot read --config {args.config_file}: {err}"
            ) from None
        data.pop("version", None)
        data.pop("kind", None)
        fields.update(
            {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        )
    for item in args.set_fields:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise ConfigError(f"--set takes FIELD=VALUE, got {item!r}")
        fields[name.strip().replace("-", "_")] = parse_value(value)
    return fields
