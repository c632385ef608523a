"""Hugging Face Spaces entry point: `python app.py --help` lists every setting."""

import logging

from llama_space.server import launch
from llama_space.settings import load_settings

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    launch(load_settings())
