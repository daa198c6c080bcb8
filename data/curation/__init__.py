"""Data curation: raw videos -> annotated clips -> filtered pretraining set -> high-quality set (RECIPE section 6)."""
