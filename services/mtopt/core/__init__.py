"""The MT-Opt learning core: small pure functions and modules shared by every service.

Read top to bottom: `config` (hyperparameters), `networks` (Q-function and success detector),
`cem` (action optimisation), `bellman` (targets, loss, target networks), `replay`
(impersonation and re-balancing), `learner` (one training step), `export` (ONNX).
"""
