"""Built-in sampling schedules: the noise levels a sampler steps through."""
