"""mtopt: MT-Opt continuous multi-task robot learning as Kubernetes-native gRPC services.

The torch-free parts (robot, episode, episode_codec, onnx_policy, sim, tasks, serving, v1) run on
robots; `mtopt.core` and the services need the `server` extra.
"""

__version__ = "0.1.0"
