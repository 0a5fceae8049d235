"""`cola experiment`: a grid of calibration strategies × compression methods × seeds, and its report."""

from cola.experiment.config import ExperimentConfig, load_experiment_config
from cola.experiment.runner import Cell, Experiment, grid, run_experiment

__all__ = ["Cell", "Experiment", "ExperimentConfig", "grid", "load_experiment_config", "run_experiment"]
