"""Hessians computed once per model and calibration set, saved, and reused by later runs (CALDERA's workflow
step 1; QuIP#'s offline Hessians).

A cache holds, for every decoder block, H = Σ x xᵀ of each input group's calibration inputs (q/k/v share one,
gate/up share one; o and down have their own), over the inputs the *dense* model gives the block: they do not
depend on what a run does to earlier blocks, so one cache serves every rank, bit width, quantizer and rerun.
(Without a cache, `compress_sequentially` calibrates block i on the outputs of the already compressed blocks
0..i−1, which no other run can reuse.)

Layout of a cache directory:
    manifest.json               format, the model and calibration digests, blocks, tokens; written first, then
                                rewritten with "complete": true after the last block
    block_0000.safetensors      one float32 H per input group, the layers reading each in the metadata

H is accumulated in float64 (65k tokens of sums) and stored in float32: the decomposition reads H in float32
(`InputStats.hessian`), so the stored copy is exactly what a run without the cache uses. Files are written
atomically; nothing is pickled.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cola.atomic import atomic_path, read_json, write_json
from cola.compress.stats import InputStats
from cola.errors import ColaError

FORMAT = "cola-hessians/1"
MANIFEST = "manifest.json"


def calibration_digest(input_ids: list[torch.Tensor]) -> str:
    """A hex digest of the exact calibration token ids, in order."""
    from cola.feature_cache import tokens_digest

    return tokens_digest([ids.tolist() for ids in input_ids])


@dataclass
class HessianCache:
    """The cache directory `path` for one model (`model_digest`) and one calibration set (`calibration_digest`).

    `open` refuses a directory holding another model's or another calibration set's Hessians; `complete` says
    whether every block is there (a run killed while computing leaves an incomplete cache, computed again)."""

    path: Path
    model_digest: str
    calibration_digest: str
    blocks: int
    complete: bool = False

    @classmethod
    def open(cls, path: str | Path, model: torch.nn.Module, input_ids: list[torch.Tensor],
             blocks: int) -> HessianCache:
        """The cache at `path` for this model and these calibration token ids; raises ColaError (one line) when
        the directory holds a cache of another model, calibration set or format, or is not a directory."""
        from cola.feature_cache import model_digest

        path = Path(path).expanduser()
        if path.exists() and not path.is_dir():
            raise ColaError(f"--hessian_cache {path} is a file; give a directory (created if missing)")
        cache = cls(path, model_digest(model), calibration_digest(input_ids), blocks)
        manifest = read_json(path / MANIFEST)
        if manifest is None:
            if path.is_dir() and any(path.glob("block_*.safetensors")):
                raise ColaError(f"--hessian_cache {path} holds Hessian files but no readable {MANIFEST}; delete "
                                "the directory or give another one")
            return cache
        if manifest.get("format") != FORMAT:
            raise ColaError(f"--hessian_cache {path} is not a cola Hessian cache of this version (format "
                            f"{manifest.get('format')!r}, expected {FORMAT!r}); delete it or give another directory")
        for key, what in (("model_digest", "another model"), ("calibration_digest", "another calibration set")):
            if manifest.get(key) != getattr(cache, key):
                raise ColaError(f"--hessian_cache {path} holds the Hessians of {what} ({key} "
                                f"{str(manifest.get(key))[:12]}, this run's {getattr(cache, key)[:12]}); give "
                                "another directory or delete it")
        if manifest.get("blocks") != blocks:
            raise ColaError(f"--hessian_cache {path} has {manifest.get('blocks')} blocks, the model {blocks}; "
                            "give another directory or delete it")
        cache.complete = bool(manifest.get("complete")) and all(cache._block_file(i).is_file() for i in range(blocks))
        return cache

    def _block_file(self, index: int) -> Path:
        return self.path / f"block_{index:04d}.safetensors"

    def _manifest(self, complete: bool, tokens: int | None = None) -> dict[str, Any]:
        return {"format": FORMAT, "model_digest": self.model_digest, "calibration_digest": self.calibration_digest,
                "blocks": self.blocks, "dtype": "float32", "tokens": tokens, "complete": complete}

    def start(self) -> None:
        """Claim the directory for this model and calibration set before the first block is written."""
        write_json(self.path / MANIFEST, self._manifest(False))

    def save_block(self, index: int, stats: dict[str, InputStats]) -> None:
        """Write block `index`'s Hessians: one float32 tensor per distinct input, keyed by the first layer reading
        it (layers reading one input, q/k/v or gate/up, have equal moments and are stored once)."""
        from safetensors.torch import save_file

        tensors: dict[str, torch.Tensor] = {}
        layers: dict[str, str] = {}
        tokens: dict[str, int] = {}
        for name, stat in stats.items():
            hessian = stat.hessian.detach().cpu().contiguous()
            key = next((k for k, t in tensors.items() if t.shape == hessian.shape and torch.equal(t, hessian)), name)
            if key == name:
                tensors[name] = hessian
            layers[name], tokens[name] = key, stat.tokens
        metadata = {"format": FORMAT, "layers": json.dumps(layers), "tokens": json.dumps(tokens)}
        with atomic_path(self._block_file(index)) as temporary:
            save_file(tensors, str(temporary), metadata=metadata)

    def finish(self, tokens: int) -> None:
        """Mark the cache complete (every block written)."""
        write_json(self.path / MANIFEST, self._manifest(True, tokens))
        self.complete = True

    def load_block(self, index: int) -> dict[str, InputStats]:
        """Block `index`'s statistics by layer name (within the block), as the run that saved them collected them;
        a missing or unreadable file is a one-line ColaError."""
        from safetensors import safe_open

        file = self._block_file(index)
        try:
            with safe_open(str(file), framework="pt") as f:
                metadata = f.metadata() or {}
                layers, tokens = json.loads(metadata["layers"]), json.loads(metadata["tokens"])
                moments = {key: f.get_tensor(key).to(torch.float64) for key in set(layers.values())}
        except Exception as exc:  # noqa: BLE001 - any reader failure means the cache cannot be used
            raise ColaError(f"cannot read the Hessian cache file {file}: {exc}; delete {self.path} to compute it "
                            "again") from exc
        return {name: InputStats(full=True, tokens=tokens[name], moment=moments[key]) for name, key in layers.items()}
