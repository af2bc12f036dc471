"""The output file: format, redo journal, the sink the job writes through, merge, readers."""
