"""
Tools shipped with fmq, apart from the service: the stand-in backend
(C{fmq-backend}), the load tester (C{fmq-loadtest}) and the benchmark with its
bare Klein ceiling (C{scripts/bench}).
"""
