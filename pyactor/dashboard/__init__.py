"""pyactor's web dashboard: `pyactor dashboard`, or `pyactor start --head --dashboard-port P`.

    launch.py          the command: resolve the cluster, serve, print the link (token once)
    server.py          the aiohttp app: the static page (static/) and the JSON API
    auth.py            the cluster token as the only key: cookie or Bearer, 401 otherwise
    cluster_client.py  connections to the nodes (nodes, metrics, kill, cancel)
    state_source.py    actors, tasks, objects... from pyactor.util.state
    runs.py            RL runs and Tune experiments, read from their folders

Nothing here is imported by `import pyactor`; aiohttp is the optional extra `dashboard`.
See docs/dashboard.md.
"""
