"""A calibration-quality score: how well a calibration set should preserve a deployment target, measured without
compressing (issue 19, item 3). Lower is better for every figure.

Per capability, a reference set of that capability's texts (Stage 1's reference sets, read and cut the same way)
and the calibration set each go through the uncompressed model once (`cola.stages.select.embed_pool` with moment
sketches: one forward pass per set), and two distances are taken:

- **H-match error** (`h_match_errors`): GPTQ, SparseGPT, CALDERA and Wanda see the calibration data only through
  each linear layer's input second moments H = sum_t x_t x_t^T, or its diagonal (`cola.moments`). The error is
  the relative distance ||mean_S - mean_R|| / ||mean_R|| between the token-weighted mean moment sketch of the
  calibration set S and of the reference R, for the covariance sketch and for the projected diagonal, averaged
  over sites. A set whose H looks like the target's hands the method the statistics it would have computed on
  the target's own texts.
- **Activation coverage** (`coverage_distances`): the mean over reference samples of the Euclidean distance to
  the nearest calibration sample in the projected activation features (pooled, normalised hidden states of
  every layer, one seeded projection; `cola.activations`). COLA (arXiv 2510.10618, Sec. 4.2) selects for this
  coverage of the activation space; the paper reports that such activation-space proxies track full evaluations.

Both use the same seeded projections for the calibration and the reference sets (one `SelectionConfig`), so
scores of different sets against the same references compare; scores made with other settings do not.
`score_calibration` is the whole command (`cola score`): it reads a `cola curate` output directory, scores it
and records the result in its manifest.json under "quality_score".
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cola.errors import ColaError

if TYPE_CHECKING:
    import torch

    from cola.activations import Extraction
    from cola.config import SelectionConfig
    from cola.moments import MomentSketches

log = logging.getLogger(__name__)

SCORE_KEY = "quality_score"
PARTS = ("covariance", "diagonal")


# --- the math: pure functions on arrays -------------------------------------------------------------------------

def h_match_errors(calibration: MomentSketches, reference: MomentSketches) -> dict[str, list[float]]:
    """Per site, the relative error of the calibration set's token-weighted mean sketch against the reference's:
    {"covariance": [...], "diagonal": [...]}, one value per site (unitless, 0 = identical second moments).

    Both sketches must come from the same model, layers, sketch size and seed (the same random directions);
    sets with other sites are a ColaError.
    """
    from cola.moments import relative_errors, token_weighted_mean

    if (calibration.sites, calibration.sketch_dim) != (reference.sites, reference.sketch_dim):
        raise ColaError(f"the calibration and reference sketches differ ({len(calibration.sites)} vs "
                        f"{len(reference.sites)} sites, sketch_dim {calibration.sketch_dim} vs "
                        f"{reference.sketch_dim}): extract both with the same model and settings")
    target = token_weighted_mean(reference.values, reference.tokens)  # (D,)
    return relative_errors(calibration, np.arange(len(calibration.tokens)), target)


def coverage_distances(calibration: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """(M,) Euclidean distance of each reference sample's features to the nearest calibration sample's.

    calibration (N, P) and reference (M, P): projected activation features from one projection.
    """
    from cola.cluster import nearest_selected_distance

    if calibration.shape[1] != reference.shape[1]:
        raise ColaError(f"the calibration features have {calibration.shape[1]} dimensions and the reference's "
                        f"{reference.shape[1]}: extract both with the same settings")
    stacked = np.concatenate([reference, calibration])  # (M + N, P): the calibration rows are the "selected" ones
    return nearest_selected_distance(stacked, np.arange(len(reference), len(stacked)))[: len(reference)]


@dataclass(frozen=True)
class CapabilityScore:
    """One capability's score of a calibration set; lower is better for the four errors."""

    reference: str            # the reference set's source, as given
    reference_samples: int
    reference_tokens: int
    h_match_error: float      # mean of covariance_error and diagonal_error
    covariance_error: float   # mean over sites of the covariance sketch's relative error
    diagonal_error: float     # mean over sites of the projected diagonal's relative error
    coverage_distance: float  # mean over reference samples of the distance to the nearest calibration sample


def score_extractions(calibration: Extraction, references: Mapping[str, tuple[str, Extraction]],
                      ) -> dict[str, CapabilityScore]:
    """Each capability's score from extractions already made: `references` maps capability -> (its source as
    given, its Extraction); every Extraction must hold moment sketches (`sketch_dim` set)."""
    scores = {}
    for capability, (source, reference) in references.items():
        if calibration.sketches is None or reference.sketches is None:
            raise ColaError("scoring needs moment sketches: extract with sketches=True")
        errors = h_match_errors(calibration.sketches, reference.sketches)
        means = {part: float(np.mean(errors[part])) for part in PARTS}
        scores[capability] = CapabilityScore(
            reference=source, reference_samples=len(reference.features),
            reference_tokens=int(reference.sketches.tokens.sum()),
            h_match_error=round((means["covariance"] + means["diagonal"]) / 2, 6),
            covariance_error=round(means["covariance"], 6), diagonal_error=round(means["diagonal"], 6),
            coverage_distance=round(float(coverage_distances(calibration.features, reference.features).mean()), 6))
    return scores


@dataclass(frozen=True)
class QualityScore:
    """What `cola score` measured: the set, the settings that make scores comparable, one entry per capability."""

    model: str
    calibration_samples: int
    calibration_tokens: int
    sequence_length: int            # the reference texts were cut to this many tokens
    settings: dict[str, Any]        # the extraction's layers, pooling, projection_dim, sketch_dim, seed
    capabilities: dict[str, CapabilityScore]

    def as_dict(self) -> dict[str, Any]:
        """The manifest's "quality_score" entry (deterministic for the same set, references and settings)."""
        return {"model": self.model, "calibration_samples": self.calibration_samples,
                "calibration_tokens": self.calibration_tokens, "sequence_length": self.sequence_length,
                "lower_is_better": True, "settings": self.settings,
                "capabilities": {name: asdict(score) for name, score in self.capabilities.items()}}


def score_settings(selection: SelectionConfig) -> dict[str, Any]:
    """The extraction settings a score depends on (scores made with different ones do not compare)."""
    return {"layers": "all" if selection.layers is None else list(selection.layers), "pooling": selection.pooling,
            "projection_dim": selection.projection_dim, "sketch_dim": selection.sketch_dim, "seed": selection.seed}


# --- the model and the files ------------------------------------------------------------------------------------

def embed_for_score(model: torch.nn.Module, token_ids: Sequence[Sequence[int]], selection: SelectionConfig, *,
                    pad_token_id: int = 0, quiet: bool = False) -> Extraction:
    """One forward pass over a set: (N, projection_dim) features and its moment sketches (`embed_pool`)."""
    from cola.stages.select import embed_pool

    return embed_pool(model, token_ids, selection, pad_token_id=pad_token_id, sketches=True, quiet=quiet)


def read_references(references: Mapping[str, str] | Sequence[tuple[str, str]], *, reference_size: int = 64,
                    ) -> dict[str, Any]:
    """capability -> its reference Source, read as `cola curate --reference CAPABILITY=SOURCE` reads Stage 1's
    (`cola.stages.mixture.load_references`: a file or a dataset name, a seeded sample of at most
    `reference_size` records). Raises ColaError (naming the --reference flag) for an empty list, a capability
    given twice or blank, a source that cannot be read."""
    from cola.config import CurateConfig
    from cola.stages.mixture import load_references

    pairs = reference_pairs(references)
    if not pairs:
        raise ColaError("no reference set given: name at least one with --reference CAPABILITY=SOURCE")
    # CurateConfig checks the pairs (a capability twice, a blank one) and carries the reference settings
    config = CurateConfig(datasets=("embedded",), references=pairs, reference_size=reference_size)
    return load_references(config, [capability for capability, _ in pairs])


def reference_pairs(references: Mapping[str, str] | Sequence[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    """The (capability, source) pairs of a mapping or of a sequence of pairs, in their order; anything else,
    or a source that is not a non-empty string, is a ColaError."""
    from cola.io import describe_value

    pairs = (tuple(references.items()) if isinstance(references, Mapping)
             else tuple(references) if isinstance(references, (list, tuple)) else None)
    if pairs is None or not all(isinstance(p, (list, tuple)) and len(p) == 2 for p in pairs):
        raise ColaError(f"references must map each capability to its source (a file or a dataset name), e.g. "
                        f"{{'math': 'gsm8k'}}, got {describe_value(references)}")
    for capability, source in pairs:
        if not isinstance(capability, str) or not isinstance(source, str) or not source.strip():
            raise ColaError(f"--reference {capability}={source}: write CAPABILITY=SOURCE, the source a file or a "
                            "dataset name")
    return tuple((capability, source) for capability, source in pairs)


def reference_token_ids(sources: Mapping[str, Any], tokenizer: Any, sequence_length: int,
                        ) -> dict[str, list[np.ndarray]]:
    """capability -> its reference texts formatted and cut to `sequence_length` tokens as Stage 1's probes are
    (`cola.stages.process.reference_probes`). A reference with no text left is a ColaError."""
    from cola.stages.process import reference_probes

    found = {}
    for capability, source in sources.items():
        found[capability] = [p.input_ids for p in reference_probes(source, tokenizer, sequence_length)]
        if not found[capability]:
            raise ColaError(f"the reference set for {capability} ({source.spec.name}) holds no text")
    return found


def score_calibration(calibration_dir: str | os.PathLike[str],
                      references: Mapping[str, str] | Sequence[tuple[str, str]], *, model: str | None = None,
                      reference_size: int = 64, selection: SelectionConfig | None = None, device: str = "auto",
                      dtype: str = "auto", trust_remote_code: bool = False, write: bool = True,
                      quiet: bool = False, device_map: str | None = None, max_memory: str | None = None,
                      offload_folder: str | None = None) -> QualityScore:
    """Score a `cola curate` output directory against reference sets, one per capability (`cola score`).

    references: capability -> source (a file or a dataset name, as `cola curate --reference` takes). model:
    default the model named in the set's manifest. selection: the extraction settings (default
    SelectionConfig(): every layer, 64 projected dimensions, sketch_dim 16, seed 42). With `write`, the score is
    recorded in the set's manifest.json under "quality_score" (replacing an earlier one) by one atomic rename.

    Everything is read and checked before the model runs, and nothing is written unless all succeeds. Raises
    ColaError (one line) for a missing or damaged calibration directory, a bad or unreadable reference, a model
    that does not load, a tokenizer whose vocabulary differs from the set's manifest, a manifest changed while
    the set was scored. `device_map` (with `max_memory`, `offload_folder`) shards the model over devices
    (`cola.models.load_model`).
    """
    from cola.compress.calibration import load_calibration
    from cola.config import ModelConfig, SelectionConfig
    from cola.export import MANIFEST_FILE
    from cola.models import resolve_device, resolve_dtype

    selection = selection if selection is not None else SelectionConfig()
    calibration = load_calibration(calibration_dir)
    manifest_path = Path(calibration_dir) / MANIFEST_FILE
    manifest_bytes = _read_manifest(manifest_path, calibration.manifest)
    name = model if model is not None else calibration.manifest.get("model")
    if not isinstance(name, str) or not name:
        raise ColaError(f"{manifest_path} names no model: give one with --model")
    settings = ModelConfig(model=name, device=device, dtype=dtype, trust_remote_code=trust_remote_code,
                           device_map=device_map, max_memory=max_memory, offload_folder=offload_folder)
    if device_map is None:
        resolve_dtype(settings.dtype, resolve_device(settings.device))  # a bad device or dtype fails before reading
    sources = read_references(references, reference_size=reference_size)
    loaded, tokenizer = settings.load(quiet=quiet)
    try:
        calibration.check_vocabulary(tokenizer)
    except ColaError as exc:
        raise ColaError(f"{exc}, or score it with the model it was curated with (--model)") from None
    length = _sequence_length(calibration.manifest, calibration.sequence_length)
    probes = reference_token_ids(sources, tokenizer, length)
    pad = tokenizer.pad_token_id or 0
    found = embed_for_score(loaded, [x.numpy() for x in calibration.input_ids], selection, pad_token_id=pad,
                            quiet=quiet)
    given = dict(reference_pairs(references))
    extracted = {capability: (given[capability],
                              embed_for_score(loaded, ids, selection, pad_token_id=pad, quiet=quiet))
                 for capability, ids in probes.items()}
    score = QualityScore(model=name, calibration_samples=len(calibration), calibration_tokens=calibration.num_tokens,
                         sequence_length=length, settings=score_settings(selection),
                         capabilities=score_extractions(found, extracted))
    if write:
        record_score(manifest_path, manifest_bytes, score)
    return score


def _sequence_length(manifest: Mapping[str, Any], longest: int) -> int:
    """The set's curated sequence length (its manifest's settings), else its longest sample."""
    settings = manifest.get("settings")
    value = settings.get("sequence_length") if isinstance(settings, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else longest


def _read_manifest(path: Path, read: Mapping[str, Any]) -> bytes:
    """manifest.json's bytes, which must hold the manifest `load_calibration` read (else the set was replaced)."""
    try:
        data = path.read_bytes()
        same = json.loads(data) == read
    except (OSError, ValueError):
        same = False
    if not same:
        raise ColaError(f"{path} changed while it was read (is a `cola curate` writing to it?); try again when it "
                        "has finished")
    return data


def record_score(manifest_path: Path, read_bytes: bytes, score: QualityScore) -> None:
    """Rewrite manifest.json with `score` under "quality_score", atomically (a reader sees the old file or the
    new one); refused (ColaError) when the file is no longer the one scored (`read_bytes`)."""
    from cola.atomic import write_text

    try:
        current = manifest_path.read_bytes()
    except OSError as exc:
        raise ColaError(f"cannot read {manifest_path} again to record the score: {exc.strerror or exc}") from None
    if current != read_bytes:
        raise ColaError(f"{manifest_path} changed while the set was scored (did `cola curate` rewrite it?); "
                        "score it again")
    manifest = json.loads(read_bytes)
    manifest[SCORE_KEY] = score.as_dict()
    try:
        write_text(manifest_path, json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    except OSError as exc:
        raise ColaError(f"cannot write the score into {manifest_path}: {exc.strerror or exc}") from None


def format_score(score: QualityScore, calibration_dir: str | os.PathLike[str]) -> str:
    """The table `cola score` prints: one row per capability, lower is better in every column."""
    head = (f"quality score of {calibration_dir} ({score.calibration_samples} samples, {score.calibration_tokens} "
            f"tokens) on {score.model}; lower is better")
    width = max([10, *map(len, score.capabilities)])
    lines = [head, f"  {'capability':{width}}  {'refs':>5}  {'H-match':>8}  {'cov.':>8}  {'diag.':>8}  "
                   f"{'coverage':>8}  reference"]
    for capability, s in score.capabilities.items():
        lines.append(f"  {capability:{width}}  {s.reference_samples:5d}  {s.h_match_error:8.4f}  "
                     f"{s.covariance_error:8.4f}  {s.diagonal_error:8.4f}  {s.coverage_distance:8.4f}  {s.reference}")
    return "\n".join(lines)
