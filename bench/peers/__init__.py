"""Other correspondence models' plain-PyTorch code, next to the pscfast ops that replace it.

One module per model (or family): the tensor code the model runs for each op pscfast replaces (global
correlation, local cost volume, feature or lookup warps, kernel soft-argmax), the same computation through
pscfast.ops, and a minimal matching head written from the paper, built twice (plain PyTorch / pscfast ops).
`cases.CASES` lists the benchmark cases at the models' shapes (bench/bench_peers.py times them;
tests/test_bench_peers.py checks in float64 that every provider of a case computes the same thing).
"""
