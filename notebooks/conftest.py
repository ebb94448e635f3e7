# nbval checks the solved (committed) notebooks only; `make learner` writes stubs to learner/.
collect_ignore = ["learner"]
