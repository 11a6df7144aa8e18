"""The instruction captioner: fine-tune an open multi-image MLLM on exported curated
instructions (`acedata export-captioner`), evaluate it on a held-out split, and export
it for serving (`vllm serve` / `transformers serve`), which the instruct stage calls in
`natural_mode: captioner`.

config   — the training YAML (model, LoRA/full, data, optimiser, scale-out)
model    — loading through transformers' auto classes, the tiny random-init InternVL, LoRA
data     — the exported chat JSONL as model inputs, answer-only labels, held-out split
train    — the training loop, safetensors checkpoints, exact resume, Ray Train
metrics  — instruction metrics (indicators, exact match, edit distance, BLEU, ROUGE-L, MiniLM)
evaluate — greedy generation on the held-out split per checkpoint: table and plot
serve    — merged model (or base + LoRA adapter) directories for vLLM
"""
