# nbval checks the solved (committed) notebooks only; `make learner` writes stubs there.
collect_ignore = ["notebooks/learner"]
