"""The settings of each curation stage: Stage 2's filters, reasoning and processing, Stage 1's signal weights,
Stage 3's selection. Frozen, keyword-only, checked at construction; their fields carry their CLI help
(`cola.settings.option`). Inside a `CurateConfig` their `seed` fields are derived from its one `seed`
(`cola.config.curate.stage_seeds`), so they are not flags and a config file may not set them there.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from cola.errors import ColaError, unknown_choice
from cola.schema import check_field_types
from cola.settings import check_choices, option

CHAT_TEMPLATE_MODES = ("auto", "on", "off")
# template: whatever the chat template does without a system turn (SmolLM2 and Qwen2.5 insert a default system
# prompt into every record); none: no system turn at all
SYSTEM_PROMPT_MODES = ("template", "none")
# Stage 2's length step (cola.stages.packing.pack_to_length): how documents become samples.
LENGTH_MODES = {"pack": "a source's documents joined and cut into windows of exactly sequence_length tokens",
                "window": "each document cut alone into windows of exactly sequence_length tokens; shorter "
                          "documents dropped",
                "truncate": "each document one sample of its first sequence_length tokens; shorter ones kept "
                            "whole (samples of varying length)"}
# How a decoder layer's hidden states (one per token) become one vector per sample (cola.activations.pool).
POOLINGS = {"mean": "the mean over real tokens", "last": "the last real token's state"}
# Whether activation extraction runs the decoder blocks through torch.compile (cola.activations).
COMPILE_MODES = {"auto": "on a CPU, for pools of at least cola.activations.COMPILE_MIN_TOKENS tokens",
                 "on": "always (falls back to eager if compiling fails)", "off": "never"}
# Stage 3's methods and what each does (the manifest's account of Stage 3; peers in stages/peers.py).
SELECTION_METHODS = {"activations": "on: activation k-means medoids",
                     "moments": "on: the set whose linear-layer input second moments (the Hessians GPTQ, "
                                "SparseGPT and Wanda read) best match the pool's",
                     "outlier_coverage": "on: the set reaching the largest share of the pool's per-channel "
                                         "max|activation| of every linear-layer input (the ranges SmoothQuant and "
                                         "AWQ read)",
                     "random": "off: seeded random pick",
                     "text_clusters": "off: replaced by text_clusters (TF-IDF k-means, the text nearest each "
                                      "centroid)",
                     "lexical_diversity": "off: replaced by lexical_diversity (greedy coverage of distinct tokens)"}
# `cola curate` options that set FilterConfig fields (cola.cli), named in the fields' errors
FILTER_FLAGS = {"near_duplicate_threshold": "--near_duplicate_threshold", "min_tokens": "--min_length",
                "max_tokens": "--max_length", "perplexity_drop_fraction": "--perplexity_filter", "seed": "--seed"}
SEED_HELP = "derived from CurateConfig.seed (cola.config.curate.stage_seeds)"
# The Stage 3 methods that run the uncompressed model over the pool.
MODEL_SELECTION_METHODS = ("activations", "moments", "outlier_coverage")
# Those of them that read linear-layer input statistics (second-moment sketches, `sketch_dim`) in the same pass.
SKETCH_SELECTION_METHODS = ("moments", "outlier_coverage")


@dataclass(frozen=True, kw_only=True)
class FilterConfig:
    """Stage 2 quality filters (cola.stages.filters); a share bound of 1.0 turns that heuristic off."""

    dedup_exact: bool = option(True, help="drop exact duplicates (case and whitespace folded)", cli=False)
    dedup_near: bool = option(True, help="drop near duplicates (MinHash LSH)", cli=False)
    near_duplicate_threshold: float = option(0.8, help="MinHash Jaccard (of character 5-gram sets) above which "
                                                       "two documents are near duplicates")
    num_perm: int = option(128, help="MinHash permutations: estimate std ~ sqrt(J(1-J)/num_perm)", cli=False)
    min_tokens: int = option(16, help="drop documents with fewer tokens", flag="min_length")
    max_tokens: int | None = option(None, help="drop documents with more tokens (none: no upper bound)",
                                    flag="max_length")
    max_symbol_ratio: float = option(0.5, help="largest share of symbol characters (keeps LaTeX math and code)",
                                     cli=False)
    max_digit_ratio: float = option(0.5, help="largest share of digits", cli=False)
    max_repeated_line_ratio: float = option(0.3, help="largest share of non-empty lines repeating an earlier "
                                                      "line (Gopher)", cli=False)
    perplexity_drop_fraction: float = option(0.0, help="drop this highest-perplexity fraction of documents (Ji et "
                                                       "al., ICLR 2025); 0 = off", flag="perplexity_filter",
                                             metavar="FRACTION")
    seed: int = option(42, help=f"MinHash permutations' seed; {SEED_HELP}", cli=False, derived="seed")

    def __post_init__(self) -> None:  # the error names the field, the valid range, the value and the CLI flag
        check_field_types(self)

        def check(name: str, ok: bool, valid: str) -> None:
            if not ok:
                flag = f" ({FILTER_FLAGS[name]})" if name in FILTER_FLAGS else ""
                raise ColaError(f"{name} must be {valid}, got {getattr(self, name)!r}{flag}")

        check("near_duplicate_threshold", 0 < self.near_duplicate_threshold <= 1, "in (0, 1]")
        check("num_perm", self.num_perm >= 2, "at least 2")
        check("min_tokens", self.min_tokens >= 1, "at least 1")
        check("max_tokens", self.max_tokens is None or self.max_tokens >= self.min_tokens,
              f"None or at least min_tokens ({self.min_tokens})")
        for name in ("max_symbol_ratio", "max_digit_ratio", "max_repeated_line_ratio"):
            check(name, 0 <= getattr(self, name) <= 1, "in [0, 1]")
        check("perplexity_drop_fraction", 0 <= self.perplexity_drop_fraction < 1, "in [0, 1)")
        check("seed", 0 <= self.seed < 2**32, "in [0, 2**32)")

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-ready settings for the manifest."""
        return dataclasses.asdict(self)


SIGNALS = ("semantic", "token", "coverage")  # Stage 1's similarity signals (DomainConfig.<signal>_weight)


@dataclass(frozen=True, kw_only=True)
class DomainConfig:
    """Stage 1 (cola.stages.domain): how the three similarity signals are weighted, how finely a reference set
    is clustered."""

    semantic_weight: float = option(0.4, help="weight of the semantic signal (activation centroids)", cli=False)
    token_weight: float = option(0.3, help="weight of the token signal (unigram distributions)", cli=False)
    coverage_weight: float = option(0.3, help="weight of the activation-space coverage signal", cli=False)
    reference_clusters: int = option(8, help="k for clustering a reference set's features (capped at its size)",
                                     cli=False)
    seed: int = option(42, help=f"reference clustering's seed; {SEED_HELP}", cli=False, derived="seed")

    def __post_init__(self) -> None:
        check_field_types(self)
        weights = (self.semantic_weight, self.token_weight, self.coverage_weight)
        if any(not math.isfinite(w) or w < 0 for w in weights):
            raise ColaError(f"semantic/token/coverage weights must be finite and >= 0, got {weights}")
        if sum(weights) == 0:
            raise ColaError("semantic/token/coverage weights are all 0: at least one must be positive")
        if self.reference_clusters < 1:
            raise ColaError(f"reference_clusters must be at least 1, got {self.reference_clusters}")


@dataclass(frozen=True, kw_only=True)
class ReasoningConfig:
    """How reasoning chains are generated (cola.stages.reasoning); `temperature=0` is greedy decoding."""

    max_new_tokens: int = option(256, help="most tokens of a generated reasoning chain",
                                 flag="reasoning_max_new_tokens")
    batch_size: int = option(8, help="prompts per reasoning-generation batch", flag="reasoning_batch_size")
    temperature: float = option(0.0, help="sampling temperature; 0 = greedy (deterministic)", cli=False)
    seed: int = option(42, help=f"sampling seed; {SEED_HELP}", cli=False, derived="seed")

    def __post_init__(self) -> None:
        check_field_types(self)
        for name in ("max_new_tokens", "batch_size"):
            value = getattr(self, name)
            if value < 1:
                raise ColaError(f"reasoning {name} must be an integer of at least 1, got {value!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ColaError(f"reasoning seed must be a non-negative integer, got {self.seed!r}")
        t = self.temperature
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t < 0:
            raise ColaError(f"reasoning temperature must be a finite number >= 0 (0 = greedy), got {t!r}")


@dataclass(frozen=True, kw_only=True)
class SelectionConfig:
    """Stage 3: which method; for activations, which layers, how far to project, how to batch; which seed."""

    method: str = option("random", flag="selection_method", choices=SELECTION_METHODS,
                         help="Stage 3: random (the default: no selection method kept more than a seeded random "
                              "pick on both measured models, docs/results/selection_*), activations (COLA's "
                              "medoids), moments (match the pool's per-layer input second moments), "
                              "outlier_coverage (reach the pool's per-channel input maxima), text_clusters "
                              "(TF-IDF k-means, as COLA-Zero), lexical_diversity (greedy distinct-token coverage, "
                              "as ZipCal); activations, moments and outlier_coverage run the model")
    layers: tuple[int, ...] | None = option(None, shown="all", help="decoder layers whose activations are used: "
                                                                    "all, '0,5,-1', '10-20' (in Python: None = all)")
    pooling: str = option("mean", choices=POOLINGS, help="how a layer's token states become one vector: mean over "
                                                          "real tokens or the last real token's state")
    projection_dim: int = option(64, help="dimensions of the random projection of the activation features")
    sketch_dim: int = option(16, help="moments, outlier_coverage: random directions per linear-layer input in its "
                                      "second-moment sketch (m; m(m+1)/2 + 2m numbers per input and candidate)")
    batch_size: int = option(16, help="sequences per forward pass at most")
    batch_tokens: int = option(4096, help="padded token slots per forward pass at most")
    compile: str = option("auto", choices=COMPILE_MODES, flag="compile_blocks",
                          help="torch.compile the decoder blocks for activation extraction (fuses the element-wise "
                               "work between the matrix products): auto (on a CPU, pools of 100k tokens or more: "
                               "compiling takes about a minute), on, off; moments and outlier_coverage run eager")
    kmeans_init: int = option(3, help="k-means restarts (best inertia kept)", cli=False)
    seed: int = option(42, help=f"selection's seed; {SEED_HELP}", cli=False, derived="seed")

    def __post_init__(self) -> None:
        check_field_types(self)
        if self.method not in SELECTION_METHODS:
            raise unknown_choice("selection method", self.method, SELECTION_METHODS)
        check_choices(self)
        for name in ("projection_dim", "sketch_dim", "batch_size", "batch_tokens", "kmeans_init"):
            if getattr(self, name) < 1:
                raise ColaError(f"{name} must be at least 1, got {getattr(self, name)}")


@dataclass(frozen=True, kw_only=True)
class ProcessConfig:
    """Stage 2 settings; `enabled=False` is the no-Stage-2 ablation (texts only cut to length)."""

    enabled: bool = option(True, help="skip Stage 2: texts are only cut to length", flag="no_stage2",
                           group="ablations")
    length: str = option("pack", choices=LENGTH_MODES,
                         help="how documents become samples: pack (a source's documents joined and cut into full "
                              "windows), window (each document windowed alone, shorter ones dropped), truncate "
                              "(each document its first sequence_length tokens, shorter ones whole)")
    chat_template: str = option("auto", choices=CHAT_TEMPLATE_MODES,
                                help="wrap Q&A records in the model's chat template (auto: when the tokenizer has "
                                     "one)")
    system_prompt: str = option("template", choices=SYSTEM_PROMPT_MODES,
                                help="templated records' system turn: template (the template's default, e.g. "
                                     "SmolLM2's 'You are a helpful AI assistant named SmolLM...' in every record) "
                                     "or none")
    field_mapping: tuple[tuple[str, str], ...] | None = option(
        None, flag="fields", metavar="ROLE=FIELD,...",
        help="map your files' fields: question=...,reasoning=...,answer=... (or text=...); none: guessed")
    filters: FilterConfig = option(default_factory=FilterConfig, help="Stage 2's quality filters")
    generate_reasoning: bool = option(False, help="write missing reasoning chains of Q&A records with a model "
                                                  "(cached by content hash)")
    reasoning_model: str | None = option(None, help="model that writes them (none: the uncompressed model "
                                                    "itself)")
    reasoning: ReasoningConfig = option(default_factory=ReasoningConfig, help="how reasoning chains are written")

    def __post_init__(self) -> None:
        check_field_types(self)
        if self.chat_template not in CHAT_TEMPLATE_MODES:
            raise unknown_choice("chat template mode", self.chat_template, CHAT_TEMPLATE_MODES)
        if self.system_prompt not in SYSTEM_PROMPT_MODES:
            raise unknown_choice("system prompt mode", self.system_prompt, SYSTEM_PROMPT_MODES)
        if self.length not in LENGTH_MODES:
            raise unknown_choice("length mode", self.length, LENGTH_MODES)
