"""Frozen, keyword-only, validated settings; each is saved into the manifest of what it made."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from cola.errors import ColaError, unknown_choice
from cola.schema import check_field_types
from cola.stages.domain import DomainConfig
from cola.stages.filters import FilterConfig
from cola.stages.reasoning import ReasoningConfig

DEPLOYMENT_TYPES = ("general", "targeted")
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
# Stage 3: COLA's activation medoids, a seeded random pick, or a peer method on the processed pool (stages/peers.py)
# Stage 3's methods and what each does (the manifest's account of Stage 3).
SELECTION_METHODS = {"activations": "on: activation k-means medoids",
                     "random": "off: seeded random pick",
                     "text_clusters": "off: replaced by text_clusters (TF-IDF k-means, the text nearest each "
                                      "centroid)",
                     "lexical_diversity": "off: replaced by lexical_diversity (greedy coverage of distinct tokens)"}


@dataclass(frozen=True, kw_only=True)
class SelectionConfig:
    """Stage 3: which method; for activations, which layers, how far to project, how to batch; which seed."""

    method: str = "activations"             # one of SELECTION_METHODS; only "activations" runs the model
    layers: tuple[int, ...] | None = None   # None: every decoder layer
    pooling: str = "mean"                   # one of POOLINGS: a layer's token states -> one vector
    projection_dim: int = 64
    batch_size: int = 16                    # sequences per forward pass at most
    batch_tokens: int = 4096                # padded token slots per forward pass at most
    kmeans_init: int = 3                    # k-means restarts (best inertia kept)
    seed: int = 42

    def __post_init__(self) -> None:
        check_field_types(self)
        if self.method not in SELECTION_METHODS:
            raise unknown_choice("selection method", self.method, SELECTION_METHODS)
        if self.pooling not in POOLINGS:
            raise unknown_choice("pooling", self.pooling, POOLINGS)
        for name in ("projection_dim", "batch_size", "batch_tokens", "kmeans_init"):
            if getattr(self, name) < 1:
                raise ColaError(f"{name} must be at least 1, got {getattr(self, name)}")


@dataclass(frozen=True, kw_only=True)
class ProcessConfig:
    """Stage 2 settings; `enabled=False` is the no-Stage-2 ablation (texts only cut to length)."""

    enabled: bool = True
    length: str = "pack"                    # one of LENGTH_MODES: how documents become samples
    chat_template: str = "auto"             # auto: wrap Q&A records in the model's chat template if it has one
    system_prompt: str = "template"         # one of SYSTEM_PROMPT_MODES: the templated records' system turn
    field_mapping: tuple[tuple[str, str], ...] | None = None  # (role, field) pairs from --fields
    filters: FilterConfig = dataclasses.field(default_factory=FilterConfig)
    generate_reasoning: bool = False        # write missing reasoning chains with a model (cached)
    reasoning_model: str | None = None      # None: the uncompressed model itself
    reasoning: ReasoningConfig = dataclasses.field(default_factory=ReasoningConfig)

    def __post_init__(self) -> None:
        check_field_types(self)
        if self.chat_template not in CHAT_TEMPLATE_MODES:
            raise unknown_choice("chat template mode", self.chat_template, CHAT_TEMPLATE_MODES)
        if self.system_prompt not in SYSTEM_PROMPT_MODES:
            raise unknown_choice("system prompt mode", self.system_prompt, SYSTEM_PROMPT_MODES)
        if self.length not in LENGTH_MODES:
            raise unknown_choice("length mode", self.length, LENGTH_MODES)


@dataclass(frozen=True, kw_only=True)
class CurateConfig:
    """One curation run: the pool, the target, how many samples of what length, and Stage 3's settings."""

    datasets: tuple[str, ...] = ("embedded",)
    target_capabilities: tuple[str, ...] | None = None  # None: the capabilities the datasets carry
    num_samples: int = 128
    sequence_length: int = 2048
    candidates_per_source: int = 1000
    deployment_type: str = "general"
    targeted_capability: str | None = None
    stage1: bool = True                     # False: the pool is every named dataset, selected as one (ablation)
    references: tuple[tuple[str, str], ...] = ()  # (capability, source spec) overriding the default probes
    reference_size: int = 64               # probe texts per capability
    capability_weights: tuple[tuple[str, float], ...] = ()  # overrides of the deployment's weights
    domain: DomainConfig = dataclasses.field(default_factory=DomainConfig)
    semantic_embedder: str | None = None   # sentence-transformers model for the semantic signal (None: activations)
    process: ProcessConfig = dataclasses.field(default_factory=ProcessConfig)
    selection: SelectionConfig = dataclasses.field(default_factory=SelectionConfig)
    stage3: bool = True                     # False: a seeded random pick from the processed pool (ablation)

    def __post_init__(self) -> None:
        check_field_types(self)
        if self.num_samples < 1:
            raise ColaError(f"num_samples must be at least 1, got {self.num_samples}")
        if self.sequence_length < 1:
            raise ColaError(f"sequence_length must be at least 1, got {self.sequence_length}")
        if self.reference_size < 1:
            raise ColaError(f"reference_size must be at least 1, got {self.reference_size}")
        if self.candidates_per_source < 1:
            raise ColaError(f"candidates_per_source must be at least 1, got {self.candidates_per_source}")
        if not self.datasets:
            raise ColaError("no datasets given: name at least one (see `cola datasets`)")
        if any(not name.strip() for name in self.datasets):
            raise ColaError(f"an empty dataset name in datasets {list(self.datasets)}: name a catalog dataset, "
                            "a file or a hub id (see `cola datasets`)")
        for names, what in ((self.target_capabilities or (), "target capability"),
                            (tuple(c for c, _ in self.references), "--reference capability")):
            if twice := sorted({n for n in names if names.count(n) > 1}):
                raise ColaError(f"{what} {twice[0]!r} given twice")
            if blank := [n for n in names if not n.strip()]:
                raise ColaError(f"an empty {what} name: {blank[0]!r}")
        if not self.stage3 and self.selection.method not in ("activations", "random"):
            raise ColaError(f"stage3 off is the seeded random pick; selection method {self.selection.method!r} "
                            "needs stage3 on")
        if self.deployment_type not in DEPLOYMENT_TYPES:
            raise unknown_choice("deployment type", self.deployment_type, DEPLOYMENT_TYPES)
        if self.deployment_type == "targeted" and not self.targeted_capability:
            raise ColaError("--deployment_type targeted needs --targeted_capability")
        if (self.targeted_capability and self.target_capabilities is not None
                and self.targeted_capability not in self.target_capabilities):
            raise unknown_choice("targeted capability", self.targeted_capability, self.target_capabilities)

    @property
    def selection_method(self) -> str:
        """The Stage-3 method that runs: the configured one, or "random" for the no-Stage-3 ablation."""
        return self.selection.method if self.stage3 else "random"

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-ready settings for the manifest."""
        return dataclasses.asdict(self)
