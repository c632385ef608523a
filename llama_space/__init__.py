"""Llama Space: chat with, fine-tune and serve Llama-family causal LMs from one Gradio app.

The package is built in layers (LAYERS): a module imports from its own layer and the layers below it, never
from one above, and no two packages import each other; tests/test_layers.py checks every import.
"""

__version__ = "0.1.0"

# The layers from the bottom up, each a package or a module of the package's root.
# - errors, settings, compat: the vocabulary and plumbing anything may use.
# - model (finding, downloading and loading base models and tokenizers) beside adapters.py (the adapters
#   folder on disk: names, files, metadata). adapters.py sits this low because inference loads adapters,
#   training writes them and export reads them, and it needs nothing but errors; pushing one to the Hub is
#   export's work, called by the service layer.
# - data: reading, validating and tokenizing training data.
# - inference: serving replies. jobs: background jobs. training, export: what those jobs run.
# - service: the actions users take. web: the surfaces (server, routes, Gradio UI).
LAYERS: tuple[tuple[str, ...], ...] = (
    ("errors", "settings", "compat"),
    ("model", "adapters"),
    ("data",),
    ("inference",),
    ("jobs",),
    ("training",),
    ("export",),
    ("service",),
    ("web",),
)
