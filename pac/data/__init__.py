"""Reading labelled text from JSONL, CSV and TSV files, and turning it into padded batches."""
