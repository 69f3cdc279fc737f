"""The s3t benchmarks: every number in BENCHMARKS.md comes from one of these modules.

    python -m bench --list              # each benchmark, its BENCHMARKS.md section, its purpose
    python -m bench NAME [args]         # run one (its own flags: --quick, --seeds, ...)
    python -m bench --smoke all         # every benchmark at its tiny smoke size
    python -m bench report              # regenerate BENCHMARKS.md from bench/results/

The registry (:mod:`bench.registry`) names them; :mod:`bench.harness` is the plumbing they
share (provenance, result files, data splits, the loopback `s3t serve` harness).
"""
