"""KFP components: each a thin, typed interface over a `hyperrec` function.

Component bodies import inside the function because KFP ships only the function's source
to the task; the work itself lives in `hyperrec` where unit tests call it directly.
"""
