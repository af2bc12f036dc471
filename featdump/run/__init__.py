"""One extraction run: placement, device and tuning, the forward pass, the writer, the job."""
