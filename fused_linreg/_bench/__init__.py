"""Helpers of ``python -m fused_linreg.bench`` (fused_linreg/bench.py), one idea a module:

- cases:   what is compared (single layers, MLP training steps, the 2048^3 GEMM) and --cases
- models:  the MLPs and optimizers under test, built alike for every implementation
- impls:   the callables timed for each case, pass and implementation (fused, eager, compile...)
- peers:   the other libraries timed beside them (openblas, onednn) and what they ran
- timing:  interleaved (round-robin) timing with warm-up, median and spread
- peak:    this CPU's measured FMA peak, the denominator of "% of peak"
- memory:  peak memory of a training step, each variant in a fresh process
- sysinfo: what machine and build the numbers come from (the header)
- report:  the printed tables, --json and --csv
- plot:    --plot, a bar chart of the eager/fused ratios
"""
