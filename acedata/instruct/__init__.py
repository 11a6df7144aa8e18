"""Instruction labeling: templates, LLM rewrites, MLLM captioners, captioner training data."""
