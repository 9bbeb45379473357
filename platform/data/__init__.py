"""Data in: FASTA reading, FASTA -> Parquet preparation, and the streaming training pipeline."""
