"""The bottom layer: which base model a setting names and where its files are, downloading it (source.py),
loading it with its tokenizer on a device in a dtype (loading.py), and a tree sharing its tensors (sharing.py).
Inference, training and export all build on it; it imports nothing of theirs."""
