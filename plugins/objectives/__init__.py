"""Built-in training objectives: EDM's (the default) and rectified flow (conditional flow matching)."""
