"""Assemble's planner, in waves on workers (the stage: acedata/stages/assemble.py).

Modules, in the order the waves run: `scan` (read input shards, meet pairs with images),
`join` (per pair bucket: `decide`, quarantine, samples, chain and split inputs), `chains`
(history rounds), `split` (connected components, split, shuffle buckets), `rows` (LCU rows).
`waves` chooses the units of each wave; `records` holds what travels between them;
`reference` is the single-process planner the distributed one is tested against.
"""
