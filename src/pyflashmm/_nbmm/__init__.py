"""The negative-binomial mixed model (NB GLMM) with a donor random intercept."""
