"""cola's one configuration system: every frozen, keyword-only, validated settings class, saved into the
manifest of what it made. Imports no stage (the stages import their settings from here).

- `stages`: each curation stage's settings (FilterConfig, ReasoningConfig, ProcessConfig, DomainConfig,
  SelectionConfig);
- `curate`: CurateConfig, its one `seed` and the rule deriving each stage's seed (`stage_seeds`);
- `run`: ModelConfig (model, device, dtype) shared by the commands, EvaluateConfig.

Each compression method's settings live with the method (cola.compress), the experiment grid's in
cola.experiment.config; all are read by `cola.settings.build` and made into flags by
`cola.settings.add_arguments`.
"""

from cola.config.curate import DEFAULT_SEED, DEPLOYMENT_TYPES, EXECUTORS, CurateConfig, StageSeeds, stage_seeds
from cola.config.run import COMPUTE_DTYPE, DTYPES, EVALUATE_BATCH_TOKENS, EvaluateConfig, ModelConfig
from cola.config.stages import (CHAT_TEMPLATE_MODES, COMPILE_MODES, FILTER_FLAGS, LENGTH_MODES,
                                MODEL_SELECTION_METHODS, POOLINGS, SELECTION_METHODS, SKETCH_SELECTION_METHODS,
                                SYSTEM_PROMPT_MODES, DomainConfig, FilterConfig, ProcessConfig, ReasoningConfig,
                                SelectionConfig)

__all__ = ["CHAT_TEMPLATE_MODES", "COMPILE_MODES", "COMPUTE_DTYPE", "DEFAULT_SEED", "DEPLOYMENT_TYPES", "DTYPES",
           "EVALUATE_BATCH_TOKENS", "EXECUTORS", "FILTER_FLAGS", "LENGTH_MODES", "MODEL_SELECTION_METHODS", "POOLINGS",
           "SELECTION_METHODS", "SKETCH_SELECTION_METHODS", "SYSTEM_PROMPT_MODES", "CurateConfig", "DomainConfig",
           "EvaluateConfig", "FilterConfig", "ModelConfig", "ProcessConfig", "ReasoningConfig", "SelectionConfig",
           "StageSeeds", "stage_seeds"]
