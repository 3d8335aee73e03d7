"""Built-in launchers: where a sweep's jobs run (this machine, this process, a SLURM cluster)."""
