"""DESeq2-style negative-binomial GLM: dispersions, IRLS, Wald/LRT, Cook's distances."""
