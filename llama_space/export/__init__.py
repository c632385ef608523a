"""After training: merge, GGUF and Ollama exports, publishing."""
