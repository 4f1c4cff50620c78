"""The artifact folder: manifest, sha256 verification, and the checks every loader runs."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from graphs.config import DecoderConfig
from graphs.schedule import Schedule

from .errors import RerouteError

# 2: fixed-resolution prefill takes visual_start [B], position_ids and attention_mask [B, T]; decode takes
# pad_lengths [B]; PoolSelect takes pad_lengths (mixed-length batches). Older artifacts must be re-exported.
FORMAT_VERSION = 2
MANIFEST = "manifest.json"
GRAPHS = ("vision", "embed", "prefill", "decode")


def installed_versions(packages) -> dict:
    """{package: version} for those of ``packages`` that are installed (recorded in manifests and reports)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in packages:
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass
class Artifact:
    root: Path
    manifest: dict

    @property
    def schedule(self) -> Schedule:
        return Schedule.from_dict(self.manifest["schedule"])

    @property
    def decoder_config(self) -> DecoderConfig:
        return DecoderConfig(**self.manifest["model"]["decoder"])

    @property
    def dtype(self) -> str:
        return self.manifest["dtype"]

    def graph_path(self, name: str) -> Path:
        return self.root / self.manifest["graphs"][name]["file"]

    @property
    def capacity(self) -> dict:
        return self.manifest["capacity"]

    def check_request(self, batch: int, prompt_len: int, max_new_tokens: int) -> None:
        """Refuse a batch or a length the graphs were not exported for (one-line errors)."""
        cap = self.capacity
        if batch > cap["max_batch"]:
            raise RerouteError(f"batch {batch} exceeds the exported max batch {cap['max_batch']} ({self.root})")
        if prompt_len + max_new_tokens > cap["max_sequence"]:
            raise RerouteError(
                f"prompt of {prompt_len} tokens + {max_new_tokens} new tokens exceeds the exported capacity of "
                f"{cap['max_sequence']} tokens ({self.root}); re-export with a larger --max-sequence"
            )

    def check_visual_tokens(self, num_visual: int) -> None:
        """Dynamic-resolution artifacts: an image may give at most ``capacity.max_visual_tokens`` (from
        max_pixels); the graphs' TopK bound and the checked capacities hold only up to it."""
        bound = self.capacity.get("max_visual_tokens")
        if bound is not None and num_visual > bound:
            raise RerouteError(f"the image gives {num_visual} visual tokens, over this artifact's capacity of "
                               f"{bound} (max_pixels {self.capacity.get('max_pixels')}); resize it or re-export")

    def hf_config(self):
        """The checkpoint's transformers config, saved beside the processor by dynamic-resolution exports
        (their preprocessing reads it: token ids, merge size, M-RoPE positions)."""
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(self.root / self.manifest["processor_dir"], local_files_only=True)

    def processor(self):
        from transformers import AutoProcessor

        directory = self.root / self.manifest["processor_dir"]
        if self.manifest["model"].get("family") == "qwen2_5_vl":  # AutoProcessor would return the tokenizer alone
            from .qwen_processor import load_images_only_processor

            return load_images_only_processor(directory)
        return AutoProcessor.from_pretrained(directory, local_files_only=True)


def open_artifact(path: str | os.PathLike, verify: bool = True) -> Artifact:
    root = Path(path)
    manifest_path = root / MANIFEST
    if not root.is_dir():
        raise RerouteError(f"artifact folder not found: {root}")
    if not manifest_path.is_file():
        raise RerouteError(f"{manifest_path} is missing: not an exported artifact")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RerouteError(f"{manifest_path} is not valid JSON: {exc}") from None
    version = manifest.get("format_version")
    if not isinstance(version, int):
        raise RerouteError(f"{manifest_path} has no format_version")
    if version < FORMAT_VERSION:
        raise RerouteError(
            f"{manifest_path} has format version {version}, older than this reroute's ({FORMAT_VERSION}): "
            f"its graphs lack the mixed-batch inputs; re-export it with `reroute export`"
        )
    if version > FORMAT_VERSION:
        raise RerouteError(
            f"{manifest_path} has format version {version}, newer than this reroute understands "
            f"({FORMAT_VERSION}); upgrade reroute"
        )
    if verify:
        verify_files(root, manifest)
    return Artifact(root, manifest)


def verify_files(root: Path, manifest: dict) -> None:
    for rel, expected in manifest.get("files", {}).items():
        path = root / rel
        if not path.is_file():
            raise RerouteError(f"{path} is missing from the artifact")
        if sha256_file(path) != expected:
            raise RerouteError(f"{path} is corrupt or modified (sha256 does not match the manifest)")
