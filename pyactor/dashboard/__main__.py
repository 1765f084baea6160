"""`python -m pyactor.dashboard`: the dashboard as a background process (`pyactor start --head
--dashboard-port P`). Its config, with the token, comes on the first line of stdin, never on the
command line; it prints one JSON line with its port once it listens."""

from pyactor.dashboard.launch import serve_from_stdin

if __name__ == "__main__":
    serve_from_stdin()
