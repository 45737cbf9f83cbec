"""`mtopt up`: every service as its own process on this machine, with simulated robots.

- `topology`: the processes and their environment (the same variables the Helm chart sets).
- `supervisor`: start in order, watch, stop gracefully.
- `monitor`: the live view and the closing summary, scraped from every /metrics endpoint.
- `run`: `run_up(UpConfig)`, the command's body.
"""
