"""``reroute verify ARTIFACT [--against CHECKPOINT]``: every weight of an artifact checked byte for byte.

The check that still runs where the artifact is too large to execute here
(exporter/verify_weights.py). Without ``--against`` the weights the artifact
was exported from are used: its checkpoint folder, or a preset's seeded
weights, written to a temporary file one tensor at a time.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from engines.errors import RerouteError


def _weights_of(artifact_dir: str, against: str | None, scratch: Path):
    """(weights folder, config or None) for the check."""
    from engines.artifact import open_artifact

    from .models import load_config
    from .skeleton import preset_checkpoint

    if against:
        return against, None
    source = open_artifact(artifact_dir, verify=False).manifest["model"]["source"]
    if source.startswith("preset:"):
        from .presets import PRESETS

        spec = source[len("preset:"):]
        config = load_config(spec)
        return str(preset_checkpoint(spec, config, PRESETS[spec]["seed"], scratch / "preset")), config
    if not Path(source).is_dir():
        raise RerouteError(f"{artifact_dir} was exported from {source}, which is not here; pass --against DIR")
    return source, None


def cmd_verify(args) -> int:
    from .verify_weights import verify_weights

    with tempfile.TemporaryDirectory(prefix="reroute-verify-") as scratch:
        weights, config = _weights_of(args.artifact, args.against, Path(scratch))
        result = verify_weights(args.artifact, weights, config)
    ok = not result["mismatched"] and not result["unverified"]
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{'OK' if ok else 'FAIL'}: {result['checked']} stored tensors checked against {weights}; "
              f"{len(result['mismatched'])} mismatched, {len(result['unverified'])} unverified")
        for name in result["mismatched"][:10] + result["unverified"][:10]:
            print(f"  {name}")
    return 0 if ok else 1


def register(sub, parser_class) -> None:
    p = sub.add_parser("verify", help="check every stored weight of an artifact against its checkpoint, byte for byte")
    p.add_argument("artifact")
    p.add_argument("--against", metavar="CHECKPOINT", help="safetensors folder (default: the one exported from)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_verify)
