"""Part-whole distillation: SAM masks -> mask embeddings -> Agglomerator pretraining -> linear probe."""
