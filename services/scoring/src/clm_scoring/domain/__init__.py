"""Pure scoring logic: BTYD summaries, model likelihoods and fits, scores. No I/O."""
