"""Fine-tuning on labelled proteins (``jobs.finetune``) and prediction with the result."""
