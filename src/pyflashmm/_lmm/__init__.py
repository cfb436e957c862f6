"""The linear mixed model from summary statistics: statistics, fit, inference."""
