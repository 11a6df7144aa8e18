"""Pair mining building blocks: union-find, blocked similarity, spherical k-means,
pass-2 scorers and the chaining guard. Pure numpy/torch/faiss; no Ray, no IO."""
