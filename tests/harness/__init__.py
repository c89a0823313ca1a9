"""The test harness: a real ComfyUI for the integration tests, and what the tests build around it.

- :mod:`harness.locate`        find a ComfyUI checkout, read its version, link this pack into ``custom_nodes/``
- :mod:`harness.comfyui`       boot ComfyUI (``--cpu``) in this process and run API prompts through its executor
- :mod:`harness.prompt_server` the part of ``server.PromptServer`` the executor talks to, recording every event
- :mod:`harness.probe_nodes`   test-only nodes (capture any value, seeded conditioning and latents)
- :mod:`harness.model_folders` per-module model roots and the guard against fixtures leaking into the shared one
- :mod:`harness.fixtures`      the pytest fixtures (``comfyui``, ``comfy_models``, ``module_models``, leak guard)
- :mod:`harness.status`        the ComfyUI status file ``.ci/run`` prints (ran or skipped, version, outcomes)
- :mod:`harness.server`        a ``main.py --cpu`` server subprocess, as a user starts it
- :mod:`harness.graphs`        API-graph builders for the pack's nodes; :mod:`harness.workflows` the shipped workflows
- :mod:`harness.crafted_archives` ``torch.save`` archives with any tensor fields (stride 0, short storages), for core and node tests

Nothing of ComfyUI is replaced: the pack is loaded by ComfyUI's own custom-node loader and prompts go
through ``execution.validate_prompt`` and ``execution.PromptExecutor`` as the server runs them.
"""
