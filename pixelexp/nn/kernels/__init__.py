"""The recurrent layers' scans: `plain` loops (the reference), the fast `scan`, and the
Diagonal BiLSTM's scan as Triton kernels (`triton_scan`, CUDA only); `steps`: the step
functions a layer's scan is handed (eager, or compiled by fast.py)."""
