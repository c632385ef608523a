"""Training data: read and validate an uploaded file, render it with the model's chat template, mask the prompt."""

from llama_space.data.formats import DEFAULT_MAX_BYTES, dataset_fingerprint
from llama_space.data.hub import HubDataset, hub_dataset, load_split
from llama_space.data.preference import build_preference_examples
from llama_space.data.preference_report import is_preference_file, validate_any, validate_preferences
from llama_space.data.preview import render_preview
from llama_space.data.tokenize import IGNORE_INDEX, tokenize_messages
from llama_space.data.validate import build_examples, load_conversations, validate_file

__all__ = [
           "DEFAULT_MAX_BYTES",
           "IGNORE_INDEX",
           "HubDataset",
           "build_examples",
           "build_preference_examples",
           "dataset_fingerprint",
           "hub_dataset",
           "is_preference_file",
           "load_conversations",
           "load_split",
           "render_preview",
           "tokenize_messages",
           "validate_any",
           "validate_file",
           "validate_preferences",
]
