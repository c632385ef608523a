"""Hugging Face Spaces entry point: `python app.py --help` lists every setting."""

import logging
import sys

from llama_space.errors import UserError
from llama_space.inference import zerogpu
from llama_space.settings import load_settings, prepare_cuda_allocator

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        prepare_cuda_allocator()  # before torch is imported (it reads the setting when CUDA starts)
        settings = load_settings()
        zerogpu.prepare(settings)  # before torch is imported
        from llama_space.web.server import launch

        launch(settings)
    except UserError as exc:  # a setting or the model to fix: say what, without a traceback
        sys.exit(f"Llama Space cannot start: {exc}")
