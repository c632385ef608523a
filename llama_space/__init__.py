"""Llama Space: chat with, fine-tune and serve Llama-family causal LMs from one Gradio app."""

__version__ = "0.1.0"
