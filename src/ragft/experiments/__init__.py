"""Each chapter's experiment: conditions, scoring, outcomes, metrics and comparisons, called from its notebook."""
