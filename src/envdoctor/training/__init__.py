"""The doctor's side of training: config validation, preflight, and launching the runner in train/."""
