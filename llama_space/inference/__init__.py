"""Serving a reply: every surface talks to one `ChatBackend` (backend.py).

Two implement it: `manager.ModelManager` runs the model in this process (model/loading.py loads it,
prompting.py applies its chat template, stream.py streams one reply in whole characters from detokenize.py,
batching.py decodes concurrent requests together with per-row sampling.py and batch_cache.py, fast_decode.py
picks the decode speed-ups) and `remote.RemoteBackend` chats through an OpenAI-compatible server;
`zerogpu.ZeroGPUBackend` runs the in-process one's replies inside ZeroGPU calls. Each puts its replies through
admission.py's queue, and declares what it can do beyond chat as backend.py's ability protocols.
"""
