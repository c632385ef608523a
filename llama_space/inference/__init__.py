"""Serving a reply: every surface talks to one `ChatBackend` (backend.py).

Two implement it: `manager.ModelManager` runs the model in this process (loading.py loads it,
prompting.py applies its chat template, stream.py streams one reply, batching.py decodes concurrent
requests together with per-row sampling.py and batch_cache.py, fast_decode.py picks the decode speed-ups,
admission.py bounds the queue) and `remote.RemoteBackend` chats through an OpenAI-compatible server.
"""
