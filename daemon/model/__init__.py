"""The network: model config, layers (attention, DeltaNet, MLP/MoE, norms, RoPE), caches, the text model.

Pure torch modules and the preallocated state they write. Knows nothing of tokens beyond ids, of
decoding strategy, of files or of serving; imports only torch and itself.
"""
