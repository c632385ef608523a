"""LoRA fine-tuning jobs: parameters, the job process, its on-disk registry and the runner that launches it."""

from llama_space.training.params import PRESETS, TrainingParams
from llama_space.training.runner import JobRunner

__all__ = ["PRESETS", "JobRunner", "TrainingParams"]
