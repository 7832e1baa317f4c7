"""``pytc view JOB_ID`` / ``pytc view OUTPUT``: a neuroglancer link to a job's data, from the service.

The service (``--url`` / ``PYTC_URL``, ``PYTC_TOKEN``) serves the data over signed links and the
neuroglancer client itself, so the link opens wherever the service is reachable. ``JOB_ID`` names a
job the service knows; ``OUTPUT`` (a path that exists here, e.g. what ``pytc run`` wrote, with
``--dataset`` for an array inside a container) must lie inside the service's data roots: the job
that wrote it is read from its attributes, so its input is shown beside it. The link is printed
(``--json``: the whole answer) and opened in a browser with ``--open``.
"""

from __future__ import annotations

import argparse
import json
import sys
import webbrowser
from pathlib import Path

from service.cli.client_commands import _client, _client_failure
from service.cli.common import EXIT_OK
from service.errors import ClientError


def add_view_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    view = commands.add_parser(
        "view",
        help="a neuroglancer link to a job's input, predictions and labels, served by the service",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
    )
    view.add_argument("target", metavar="JOB_ID|OUTPUT", help="a job id, or the path of an output")
    view.add_argument("--dataset", help="the array (or image group) inside OUTPUT's container")
    view.add_argument("--url", help="the service (default: $PYTC_URL, else http://127.0.0.1:8000)")
    view.add_argument("--open", action="store_true", help="open the link in a web browser")
    view.add_argument("--json", action="store_true", help="print the service's whole answer as JSON")
    view.set_defaults(command=view_command)


def view_command(args: argparse.Namespace) -> int:
    path = Path(args.target)
    try:
        with _client(args) as client:
            if path.exists() or args.dataset:
                answer = client.view_output(str(path.resolve()), args.dataset)
            else:
                answer = client.view(args.target)
    except ClientError as err:
        return _client_failure(err)
    if args.json:
        print(json.dumps(answer, indent=2))
    else:
        print(answer["url"])
        shown = ", ".join(f"{layer['name']} ({layer['type']})" for layer in answer["layers"])
        print(f"layers: {shown or 'none yet'}; the link works until {answer['expires_at']}", file=sys.stderr)
        for note in answer.get("notes") or []:
            print(f"note: {note}", file=sys.stderr)
    if args.open:
        webbrowser.open(answer["url"])
    return EXIT_OK
